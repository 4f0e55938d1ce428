"""One front-end process: HTTP (and gRPC) on the shared ports, admission, body reading, multipart, decode
into its slots, and the answers; the models are the engine's (torchrest.frontend.remote).

    supervisor --spawn--> run_frontend(index): bind the ports with SO_REUSEPORT (the kernel spreads new
    connections over the front-ends by a hash), connect to the engine, serve until SIGTERM (a pool of
    shared-memory slots made for each input size its models need), drain, unlink the slots

Where a front-end decodes: on its event loop for uploads up to DECODE_OFF_LOOP_BYTES (a thread hop costs
more than a small image's decode, and the loop has no model to give way to), on a thread beyond that.
--event-loop-nice does not apply here: a front-end's loop is also its decoder and the engine's only
feeder, and it runs in a process of its own, apart from the model's threads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from torchrest import tracing
from torchrest.config import ServerConfig
from torchrest.frontend import listeners
from torchrest.frontend.remote import RemoteModels
from torchrest.metrics import Metrics
from torchrest.processes import child_process_setup
from torchrest.slots import SlotPools

log = logging.getLogger("torchrest.frontend")


def run_frontend(
    config: ServerConfig, index: int, frontends: int, socket_path: Path, server_pid: int, metrics_dir: Path
) -> None:
    child_process_setup(config, f"front-end {index}", f"torchrest-fe{index}")
    torch.set_num_threads(1)  # the resize runs here, one image at a time, beside the other front-ends
    metrics = Metrics(shared_dir=str(metrics_dir))
    slots = SlotPools(server_pid, index)
    try:
        models = RemoteModels(socket_path, index, slots, config.max_image_pixels, metrics, frontends)
        claimed = listeners.claim_ports(config, reuse_port=True)  # the supervisor's ports: none is 0 here
        tracing.configure(config.tracing, f"front-end {index}")
        listeners.serve(claimed.sockets, config, metrics, models, loop_nice=0, announce=index == 0)
    finally:
        tracing.shutdown()
        slots.close()
