"""What builds and loads the models, the same in both modes (one process, or the engine process):

configure_process -> build_manager: the models named by the flags or the repository, read but not loaded
(a bad name or folder fails here, before a port is taken) -> ModelManager.load_all, later, on the
serving loop: start_runtime for each (open its instances, warm them up, start their threads)
"""

from __future__ import annotations

import asyncio
import logging

import torch

from torchrest.backends import Backend
from torchrest.config import ServerConfig
from torchrest.engine.manager import ModelManager
from torchrest.engine.runtime import ModelRuntime
from torchrest.layout import serving_layout
from torchrest.metrics import Metrics
from torchrest.models.common import LoadedModel
from torchrest.models.converted import served_as
from torchrest.models.registry import load_model
from torchrest.preprocess import Preprocessor
from torchrest.priority import hand_off_gil_quickly

log = logging.getLogger("torchrest.server")


def configure_process(config: ServerConfig) -> None:
    """What the process that runs the models sets first: torch's pools, and a thread waiting for the GIL
    gets it quickly (torchrest.priority)."""
    configure_torch(config)
    hand_off_gil_quickly()


def configure_torch(config: ServerConfig) -> None:
    """One intra-op pool sized to the cores an instance owns; no inter-op pool to oversubscribe them."""
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (tests, embedding)
        pass
    torch.set_num_threads(config.threads_per_instance)
    torch.set_flush_denormal(True)


def build_manager(config: ServerConfig, metrics: Metrics, device: str) -> ModelManager:
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
        model = served_as(load_model(config, device), config.backend, device, config.cache_folders)
        models.add(model, lambda: model)
    return models


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
        narrow=model.narrow and not device.startswith("cuda"),
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
