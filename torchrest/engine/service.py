"""The engine process: one copy of the models per device, fed by every front-end process.

    front-end --Infer(slot, task)--> FrontEndLink.received -> admit (503 from the real queue) -> runtime.submit
    (the job's pixels: a view of the front-end's slot, copied once into the batch) -> batch -> model -> the
    task's answer -> future done -> the answer written over the slot -> Answered --> front-end

It loads the models as the one-process server does (engine/manager.py, engine/runtime.py), serves the
front-ends on a Unix socket, and tells them what they need to answer without asking: a Snapshot of the
models whenever anything changes (a load, an instance that died or came back), and a Pulse of each
queue ten times a second (admission before a body is read). SIGTERM stops it once the front-ends have
drained (the supervisor sends it last).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

from torchrest import tracing
from torchrest.config import ServerConfig
from torchrest.engine.build import build_manager, configure_process
from torchrest.engine.manager import ModelEntry, ModelManager
from torchrest.engine.runtime import ModelRuntime
from torchrest.engine.stats import write_queue_gauges
from torchrest.errors import TorchrestError
from torchrest.messages import (
    Answered,
    Call,
    Cancel,
    Connection,
    EntryInfo,
    Failed,
    Hello,
    Infer,
    ModelInfo,
    Observe,
    Pulse,
    Returned,
    Slots,
    Snapshot,
    WireError,
)
from torchrest.metrics import Metrics
from torchrest.models.common import LoadedModel
from torchrest.processes import child_process_setup
from torchrest.slots import SlotFile
from torchrest.tasks.registry import Answer
from torchrest.timing import StageTimes

log = logging.getLogger("torchrest.engine")

PULSE_S = 0.1  # how often the front-ends hear the queues' figures, and the engine looks for changes
CALLS = ("load", "unload", "index", "statistics", "activity")  # what a front-end may Call


class Engine:
    def __init__(self, config: ServerConfig, models: ModelManager, metrics: Metrics) -> None:
        self.config = config
        self.models = models
        self.metrics = metrics
        self.links: set[FrontEndLink] = set()
        self._generation = 0
        self._published: Any = None
        self._infos: dict[tuple[int, int], ModelInfo] = {}

    async def run(self, socket_path: Path) -> int:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        # the supervisor stops the engine last, with SIGTERM; a terminal's Ctrl-C (SIGINT to the whole
        # process group) must not stop it while the front-ends still drain through it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        server = await loop.create_unix_server(lambda: FrontEndLink(self), str(socket_path))
        pulses = asyncio.create_task(self._pulse(stopping))
        loading = asyncio.create_task(self.models.load_all(after_each=self.publish))
        await asyncio.wait({loading, asyncio.create_task(stopping.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if self.models.load_error is None:
            await stopping.wait()
        server.close()
        pulses.cancel()
        for link in list(self.links):
            link.abort("the engine is stopping")
        await self.models.stop()
        return self.models.exit_status()

    # -- what the front-ends are told ----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        entries = [
            EntryInfo(
                e.name,
                self._info(e.model),
                str(e.state),
                e.reason,
                e.runtime.info if e.runtime else None,
                (e.runtime.admission.max_in_flight, e.runtime.admission.instances) if e.runtime else (0, 1),
            )
            for e in self.models.entries.values()
        ]
        return Snapshot(self.models.default, entries, self.models.not_ready_reason(), self._generation)

    def publish(self) -> None:
        """Send a Snapshot to every front-end if anything in it changed since the last one."""
        key = (
            self.models.not_ready_reason(),
            self.models.default,
            tuple(_entry_key(e) for e in self.models.entries.values()),
        )
        if key == self._published:
            return
        self._published = key
        self._generation += 1
        snapshot = self.snapshot()
        for link in self.links:
            link.send(snapshot)

    async def _pulse(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.publish()
            runtimes = [e.runtime for e in self.models.entries.values() if e.runtime is not None]
            queues = {r.name: (r.admission.in_flight, r.admission.seconds_per_image) for r in runtimes}
            write_queue_gauges(self.metrics, ((r.name, len(r.queue), r.admission.in_flight) for r in runtimes))
            pulse = Pulse(queues)
            for link in self.links:
                link.send(pulse)
            await asyncio.sleep(PULSE_S)

    def _info(self, model: LoadedModel) -> ModelInfo:
        """What the front-ends need of `model`, made once per model object (and again once it is bound to its
        outputs, as it warms up)."""
        key = (id(model), id(model.heads))
        info = self._infos.get(key)
        if info is None:
            info = ModelInfo(
                model.name,
                model.version,
                model.labels,
                model.input_spec,
                model.pretrained,
                model.metadata,
                model.describe(),
                model.tasks,
                model.heads,
            )
            live = {id(entry.model) for entry in self.models.entries.values()}
            self._infos = {known: value for known, value in self._infos.items() if known[0] in live}
            self._infos[key] = info
        return info

    # -- what the front-ends may ask -------------------------------------------------------------------
    async def call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method not in CALLS:
            raise TorchrestError(f"the engine has no call {method!r}")
        if method == "load":
            await self.models.load(*args)
            result = None
        elif method == "unload":
            await self.models.unload(*args)
            result = None
        else:
            result = await getattr(self.models, method)(*args)
        self.publish()
        return result


def _entry_key(entry: ModelEntry) -> tuple[object, ...]:
    runtime = entry.runtime
    return (entry.name, id(entry.model), entry.state, entry.reason, id(runtime), runtime and runtime.not_ready_reason())


class FrontEndLink(Connection):
    """The engine's end of one front-end's connection: its slots, and its requests in flight."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.slots: dict[int, SlotFile] = {}  # the front-end's slot files, by slot size
        self.frontend = -1
        self.pending: dict[int, asyncio.Future[Answer]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.engine.links.add(self)
        self.send(self.engine.snapshot())

    def lost(self) -> None:
        self.engine.links.discard(self)
        for future in list(self.pending.values()):
            future.cancel()  # nobody is left to answer: drop the jobs before the model runs them
        for slots in self.slots.values():
            slots.close()
        self.slots.clear()
        log.info("front-end %d disconnected", self.frontend)

    def received(self, message: Any) -> None:
        if isinstance(message, Infer):
            self._infer(message)
        elif isinstance(message, Cancel):
            future = self.pending.get(message.call)
            if future is not None:
                future.cancel()
        elif isinstance(message, Observe):
            entry = self.engine.models.entries.get(message.model)
            if entry is not None and entry.runtime is not None:
                entry.runtime.recent.latencies_s.extend(message.totals_s)  # the front-end observed the histogram
        elif isinstance(message, Call):
            asyncio.get_running_loop().create_task(self._call(message))
        elif isinstance(message, Slots):
            self.slots[message.pool] = SlotFile.attach(message.path, message.slot_count, message.pool)
        elif isinstance(message, Hello):
            self.frontend = message.frontend
            log.info("front-end %d (pid %d) connected", message.frontend, message.pid)

    def _infer(self, message: Infer) -> None:
        try:
            runtime = self.engine.models.runtime(message.model, message.version)
            runtime.admit(1, message.deadline_s)
        except TorchrestError as error:
            self.send(Failed(message.call, WireError.of(error)))
            return
        if message.slot >= 0:
            pixels = self.slots[message.pool].pixels(message.slot, message.shape)  # its Slots came first
        else:
            pixels = message.inline
        times = StageTimes(link=message.trace)
        try:
            future = runtime.submit(
                pixels, message.deadline_s, message.request_id, times, message.task, message.options
            )
        except TorchrestError as error:  # the model is being unloaded, or does not do this task
            runtime.release(1)
            self.send(Failed(message.call, WireError.of(error)))
            return
        self.pending[message.call] = future
        future.add_done_callback(partial(self._answered, message, runtime, times))

    def _answered(
        self, message: Infer, runtime: ModelRuntime, times: StageTimes, future: asyncio.Future[Answer]
    ) -> None:
        runtime.release(1)
        self.pending.pop(message.call, None)
        if future.cancelled():
            self.send(Failed(message.call, WireError("TorchrestError", "cancelled", {})))
            return
        error = future.exception()
        if error is not None:
            wire = (
                WireError.of(error)
                if isinstance(error, TorchrestError)
                else WireError("TorchrestError", str(error), {})
            )
            self.send(Failed(message.call, wire))
            return
        answer = future.result()
        value = answer.value
        slots = self.slots.get(message.pool) if message.slot >= 0 else None
        in_slot = slots is not None and slots.put(message.slot, value)
        stages = (times.queue_s, times.decode_s, times.inference_s, times.ran_s)
        inline = None if in_slot else value
        self.send(Answered(message.call, answer.best, value.shape, value.dtype.str, inline, *stages))

    async def _call(self, message: Call) -> None:
        try:
            value = await self.engine.call(message.method, message.args)
        except TorchrestError as error:
            self.send(Failed(message.call, WireError.of(error)))
            return
        self.send(Returned(message.call, value))


def run_engine(config: ServerConfig, device: str, socket_path: Path, metrics_dir: Path) -> None:
    """The engine process's main (multiprocessing spawns it): exits 0 when stopped, 1 when a model fails
    to load (the supervisor then stops the server, as one process would)."""
    child_process_setup(config, "engine", "torchrest-eng")
    configure_process(config)
    metrics = Metrics(shared_dir=str(metrics_dir))
    models = build_manager(config, metrics, device)
    tracing.configure(config.tracing, "engine")
    try:
        status = uvloop.run(Engine(config, models, metrics).run(socket_path))
    finally:
        tracing.shutdown()
    logging.shutdown()
    os._exit(status)  # the inference threads are daemons; nothing else is left to flush
