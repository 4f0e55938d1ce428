"""`torchrest serve`: checks the config, then runs one of the two modes (only the CLI imports this).

    one process   engine.build (the models, loaded once the port is open) + frontend.listeners (HTTP, gRPC)
                  on one event loop
    --workers N   supervisor: N front-end processes (frontend.process) and one engine process (engine.service)

Start-up order: validate the config, read the models (a bad name or file fails here, before the port is
taken), bind the ports (a port in use fails here), then serve. Loading and warm-up run after the port is
open, so `/health` answers 503 until the first real request can be served at full speed.
"""

from __future__ import annotations

import logging

from torchrest import tracing
from torchrest.backends import resolve_device
from torchrest.config import ServerConfig
from torchrest.cores import available_cores
from torchrest.engine.build import build_manager, configure_process
from torchrest.errors import StartupError
from torchrest.frontend import listeners
from torchrest.metrics import Metrics
from torchrest.supervisor import supervise

log = logging.getLogger("torchrest.server")


def serve(config: ServerConfig) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit status."""
    try:
        config.validate()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    device = resolve_device(config.device)
    workers = front_end_count(config, device)
    if config.tracing:
        tracing.require()  # a missing package is one line and exit 2, before any process starts
    if workers > 1:
        return supervise(config, workers, device)
    tracing.configure(config.tracing, "server")
    configure_process(config)
    metrics = Metrics()
    models = build_manager(config, metrics, device)
    listeners.tls_options(config)  # a bad certificate or key is one line and exit 2, before the port is taken
    claimed = listeners.claim_ports(config)
    config = claimed.config
    log.info(
        "torchrest serving %s (default %s) on %s (device %s, %d threads for %d model(s))",
        ", ".join(models.entries),
        models.default,
        listeners.addresses(config),
        device,
        config.total_threads,
        len(models.entries),
    )
    try:
        return listeners.serve(claimed.sockets, config, metrics, models, loop_nice=config.event_loop_nice)
    finally:
        claimed.close()
        tracing.shutdown()


def front_end_count(config: ServerConfig, device: str) -> int:
    """--workers, or by default: one process on a CPU, where the model needs the cores that more front-ends
    would take (benchmark/ceiling.py measures both); on a GPU, a front-end for every two cores the cgroup
    allows, up to 8, since the server's own work per request is then what bounds it."""
    if config.workers > 0:
        return config.workers
    if not device.startswith("cuda"):
        return 1
    return max(1, min(8, available_cores() // 2))
