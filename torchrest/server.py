"""Wires the stages together and runs them: model -> backends -> runtime -> app -> uvicorn.

Start-up order: validate the config, load the model (a bad name or file fails here, before the port is
taken), bind the port (a port in use fails here), then serve. Warm-up runs after the port is open, so
`/health` answers 503 until the first real request can be served at full speed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
import uvicorn

from torchrest import tracing
from torchrest.access import AccessControl
from torchrest.api import AppState, build_app
from torchrest.api.protocol import guarded_protocol
from torchrest.backends import Backend, resolve_device
from torchrest.config import ServerConfig
from torchrest.cores import available_cores
from torchrest.engine.manager import ModelManager
from torchrest.engine.runtime import ModelRuntime
from torchrest.errors import LoadFailed, StartupError, first_line
from torchrest.layout import serving_layout
from torchrest.metrics import Metrics
from torchrest.models.common import LoadedModel
from torchrest.models.converted import served_as
from torchrest.models.registry import load_model
from torchrest.preprocess import Preprocessor
from torchrest.priority import hand_off_gil_quickly, lower_this_thread

if TYPE_CHECKING:
    from torchrest.grpc.listener import GrpcListener

log = logging.getLogger("torchrest.server")


def serve(config: ServerConfig) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit status. One process, or with more than
    one front-end (--workers), a supervisor over front-end processes and one engine (torchrest.supervisor)."""
    try:
        config.validate()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    device = resolve_device(config.device)
    workers = front_end_count(config, device)
    if config.tracing:
        tracing.require()  # a missing package is one line and exit 2, before any process starts
    if workers > 1:
        from torchrest.supervisor import supervise

        return supervise(config, workers, device)
    tracing.configure(config.tracing, "server")
    configure_torch(config)
    hand_off_gil_quickly()
    metrics = Metrics()
    models = model_manager(config, metrics, device)
    access = AccessControl.from_config(config)
    tls = tls_options(config)
    sockets = [bind(config.host, config.port)]
    if config.metrics_port:
        sockets.append(bind(config.host, config.metrics_port))
    if config.grpc_port:
        bind(config.host, config.grpc_port).close()  # a port in use fails here, in one line
    state = AppState(config=config, metrics=metrics, models=models, access=access)
    grpc_listener = _grpc_listener(state) if config.grpc_port else None
    server = http_server(state, tls, grpc_listener)
    state.startup = lambda: _start(state, server, grpc_listener)
    state.shutdown = lambda: _stop(state, grpc_listener)
    host, port = sockets[0].getsockname()[:2]
    log.info(
        "torchrest serving %s (default %s) on %s://%s:%d (device %s, %d threads for %d model(s))",
        ", ".join(models.entries),
        models.default,
        "https" if tls else "http",
        host,
        port,
        device,
        config.total_threads,
        len(models.entries),
    )
    log_access(state)
    try:
        server.run(sockets=sockets)
    finally:
        tracing.shutdown()
    return 1 if state.load_error else 0


def front_end_count(config: ServerConfig, device: str) -> int:
    """--workers, or by default: one process on a CPU, where the model needs the cores that more front-ends
    would take (benchmark/ceiling.py measures both); on a GPU, a front-end for every two cores the cgroup
    allows, up to 8, since the server's own work per request is then what bounds it."""
    if config.workers > 0:
        return config.workers
    if not device.startswith("cuda"):
        return 1
    return max(1, min(8, available_cores() // 2))


def model_manager(config: ServerConfig, metrics: Metrics, device: str) -> ModelManager:
    """The models this server serves (read, not yet loaded): a bad name or folder fails here."""
    models = ModelManager(
        lambda model, loop: start_runtime(model, device, config, metrics, loop),
        config.model_repository,
        config.default_model,
        config.drain_timeout,
        config.model_name,
    )
    if config.model_repository is not None:
        models.add_repository(only=config.model)
    else:
        model = served_as(load_model(config), config.backend, device)
        models.add(model, lambda: model)
    return models


def http_server(state: AppState, tls: dict[str, Any], grpc_listener: GrpcListener | None) -> DrainingServer:
    """uvicorn over the app, as every process that serves HTTP runs it."""
    config = state.config
    server = DrainingServer(
        uvicorn.Config(
            build_app(state),
            loop="uvloop",
            http=guarded_protocol(config.read_timeout, state.metrics.requests.labels("other", 408).inc),
            lifespan="on",
            access_log=False,
            log_level=config.log_level,
            timeout_keep_alive=30,
            # SIGTERM: stop accepting, let admitted requests finish (their answers are awaited), then
            # the lifespan shutdown stops the inference threads
            timeout_graceful_shutdown=config.drain_timeout,
            backlog=4096,
            **tls,
        )
    )
    if grpc_listener is not None:
        server.on_exit = lambda: grpc_listener.begin_stop(config.drain_timeout)
    return server


def log_access(state: AppState) -> None:
    config, access = state.config, state.access
    log.info(
        "access: inference %s; repository load/unload %s%s%s%s",
        "needs an API key" if access.requires_api_key else "open",
        "need the admin token" if access.management_enabled else "off (no --admin-token-file)",
        f"; /metrics on port {config.metrics_port}" if config.metrics_port else "",
        f"; gRPC on port {config.grpc_port}" if config.grpc_port else "",
        f"; CORS for {config.cors_origins}" if config.cors_origin_list else "",
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM as an orderly end: stop accepting, drain, exit 0. (uvicorn re-raises the
    signal once it has shut down, which would end the process as killed by SIGTERM.)"""

    on_exit: Callable[[], None] | None = None  # also stop the other front-ends (gRPC) accepting

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.on_exit is not None:
            self.on_exit()
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and captured[-1] == sig:
            captured.pop()
            log.info(
                "SIGTERM: draining admitted requests (up to %.0f s), then exiting",
                self.config.timeout_graceful_shutdown or 0,
            )


def configure_torch(config: ServerConfig) -> None:
    """One intra-op pool sized to the cores an instance owns; no inter-op pool to oversubscribe them."""
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (tests, embedding)
        pass
    torch.set_num_threads(config.threads_per_instance)
    torch.set_flush_denormal(True)


def start_runtime(
    model: LoadedModel,
    device: str,
    config: ServerConfig,
    metrics: Metrics,
    loop: asyncio.AbstractEventLoop,
) -> ModelRuntime:
    """Open a model's instances, warm them up, start their threads (blocking: run it off the loop).

    The model is laid out on the whole thread budget as its config.json says, unless the flags say
    otherwise (torchrest.layout)."""
    layout, tune = serving_layout(
        model.layout,
        config.total_threads,
        instances=config.instances,
        max_batch_size=config.max_batch_size,
        tune_batch=config.tune_batch,
    )

    def reopen() -> Backend:
        return model.open_backend(device, layout.threads, layout.instances)

    backends = [reopen() for _ in range(layout.instances)]
    preprocessor = Preprocessor(model.input_spec, config.max_image_pixels, config.decode_threads, config.decode_ahead)
    runtime = ModelRuntime(
        model,
        backends,
        preprocessor,
        reopen=reopen,
        max_batch_size=layout.max_batch_size,
        max_wait_s=config.max_wait_ms / 1000,
        max_queue=config.max_queue,
        metrics=metrics,
        loop=loop,
        threads=layout.threads,
    )
    runtime.warm_up(tune)
    log.info(
        "model %s: %d instance(s) x %d threads, batches of up to %d (%s)",
        model.name,
        layout.instances,
        layout.threads,
        runtime.queue.max_batch_size,
        "timed at start-up" if tune else "config.json" if model.layout and not config.max_batch_size else "flags",
    )
    runtime.start()
    return runtime


def tls_options(config: ServerConfig) -> dict[str, Any]:
    """uvicorn's TLS settings, checked here first so that a bad certificate or key is one line, exit 2."""
    if config.ssl_certfile is None or config.ssl_keyfile is None:
        return {}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
        if config.ssl_ca_certs is not None:
            context.load_verify_locations(config.ssl_ca_certs)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot use the TLS certificate, key or CA bundle: {first_line(exc)}") from None
    options: dict[str, Any] = {"ssl_certfile": str(config.ssl_certfile), "ssl_keyfile": str(config.ssl_keyfile)}
    if config.ssl_ca_certs is not None:
        options |= {"ssl_ca_certs": str(config.ssl_ca_certs), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port (StartupError, one line, if it is taken). `reuse_port`: each front-end
    process binds its own, and the kernel spreads new connections over them by a hash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _grpc_listener(state: AppState) -> GrpcListener:
    from torchrest.grpc.listener import GrpcListener  # only with --grpc-port: see torchrest/grpc/__init__.py

    return GrpcListener(state, state.config.host, state.config.grpc_port)


async def _start(state: AppState, server: uvicorn.Server, grpc_listener: GrpcListener | None) -> None:
    if grpc_listener is not None:
        await grpc_listener.start()
    lower_this_thread(state.config.event_loop_nice)  # the event loop's thread; workers keep theirs
    await _start_loading(state, server)


async def _stop(state: AppState, grpc_listener: GrpcListener | None) -> None:
    """After HTTP has drained: let gRPC's admitted calls finish too, then stop the models."""
    if grpc_listener is not None:
        await grpc_listener.stopped(state.config.drain_timeout)
    await state.models.stop()


async def _start_loading(state: AppState, server: uvicorn.Server) -> None:
    """Load every model once the port is open (/health says 503 meanwhile); any failure ends the server."""

    async def load() -> None:
        for name in list(state.models.entries):
            try:
                entry = await state.models.load(name)
            except LoadFailed as exc:
                state.load_error = exc.message
                server.should_exit = True
                return
            model = entry.model
            if not model.pretrained:
                log.warning("model %s has RANDOM WEIGHTS: benchmark only", model.name)

    state.loading = asyncio.create_task(load())
