"""The engine's models as a front-end process's handlers see them: what the handlers may ask
(torchrest.served), answered from what the engine said over the link (torchrest.frontend.link).

    handler -> RemoteModels.runtime(name) -> room_for, then admitted(RemoteRuntime) (the engine's last
    Pulse: 503 before the body is read, and again after it) -> infer: decode into a slot (torchrest.slots)
    for the model's input size, Infer --> the link --> engine ... Answered -> the answer copied out of the
    slot -> Answer, with the Geometry the decode gave

RemoteModels owns the link: it opens the connection, and the link hands it each Snapshot and the news that
the engine is gone. What a handler reads without waiting (which models, their states, readiness) comes
from the engine's last Snapshot; what changes per request (statistics, the web page's figures) and what
acts (load, unload) is a Call answered by the engine. When the engine goes away every request waiting on
it fails with 503 and /health says so at once.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from torchrest.admission import Admission
from torchrest.errors import NotReady, QueueFull
from torchrest.frontend.link import Arrived, EngineLink, Held
from torchrest.messages import EntryInfo, Hello, Infer, ModelInfo, Snapshot
from torchrest.metrics import Metrics
from torchrest.preprocess import decode_into
from torchrest.served import RuntimeInfo, check_model_name, look_up, serving
from torchrest.slots import SlotPools
from torchrest.tasks.registry import Answer, Geometry
from torchrest.timing import StageTimes

CONNECT_TIMEOUT_S = 120.0  # the engine creates its socket before it loads the models: this is generous
DECODE_OFF_LOOP_BYTES = 512 * 1024  # a larger upload is decoded on a thread rather than on the event loop


@dataclass(slots=True)
class RemoteEntry:
    """A model as the repository index and the handlers see it (the fields of ModelEntry they read)."""

    name: str
    model: ModelInfo
    runtime: RemoteRuntime | None
    state: str
    reason: str

    @property
    def version(self) -> str:
        return self.model.version


class RemoteRuntime:
    """One engine model's runtime, from a front-end: admission, infer, and the figures it reports."""

    def __init__(self, link: EngineLink, entry: EntryInfo, info: RuntimeInfo) -> None:
        self.link = link
        self.model = entry.model
        self.info = info
        self.admission = Admission(*entry.admission)
        self.held = 0  # places this front-end's requests hold, from admission to answer
        self._shape = (*entry.model.input_spec.size, 3)
        self._total = link.metrics.stage_latency.labels(entry.model.name, "total")
        self._shed = link.metrics.dropped.labels(entry.model.name, "shed")
        self._written_late: set[Held] = set()  # slots of cancelled requests that a decoding thread still fills

    @property
    def name(self) -> str:
        return self.model.name

    def admit(self, count: int = 1, deadline_s: float | None = None) -> None:
        """Refuse (503) what the queue ahead cannot take in time; the engine admits again when the request
        reaches it. Ahead: the engine's in-flight count as its last Pulse showed it, or, when more, this
        front-end's own requests (those still waiting for a slot or decoding included) as a share of every
        front-end's, so that requests never wait here, unseen by the engine, past their deadline."""
        in_flight, per_image_s = self.link.queues.get(self.name, (0, 0.0))
        admission = self.admission
        admission.in_flight = max(in_flight, self.held * self.link.frontends)
        admission.seconds_per_image = per_image_s
        try:
            admission.admit(count, deadline_s)
        except QueueFull:
            self._shed.inc(count)
            raise
        self.held += count

    def release(self, count: int = 1) -> None:
        self.held -= count  # the engine releases its own places as it answers

    def _decoded_late(self, held: Held, decoding: asyncio.Future[Geometry]) -> None:
        """A cancelled request's decoding thread has finished with its slot: give the slot back."""
        self._written_late.discard(held)
        if not decoding.cancelled():
            decoding.exception()  # retrieved: nobody waits for it any more
        self.link.release(held)

    def observe_total(self, seconds: float) -> None:
        self._total.observe(seconds)
        self.link.observe(self.name, seconds)

    async def infer(
        self,
        image: bytes | np.ndarray,
        deadline_s: float,
        request_id: str,
        times: StageTimes | None = None,
        task: str = "",
        options: object = None,
    ) -> Answer:
        """Decode (or copy) the image into a slot, hand it to the engine, and wait for its answer."""
        link = self.link
        # a float tensor travels inline (the engine quantises it, as one process does): it takes no slot
        in_slot = isinstance(image, bytes) or image.dtype == np.uint8
        held = await link.take_slot(math.prod(self._shape)) if in_slot else None
        decoding = time.monotonic()
        inline, geometry, decode_s = await self._pixels_in(image, held)  # gives the slot back if it fails
        if times is not None:
            times.mark("decode (front-end)", decoding, decoding + decode_s)
        trace = times.link if times is not None else None
        task = task or self.model.tasks[0]
        pool, slot = (held.pool.size, held.slot) if held is not None else (0, -1)
        shape = self._shape if inline is None else inline.shape
        arrived = await link.request(
            lambda call: Infer(
                call,
                self.name,
                self.model.version,
                task,
                options,
                pool,
                slot,
                shape,
                inline,
                deadline_s,
                request_id,
                trace,
            ),
            held,
        )
        assert isinstance(arrived, Arrived)
        message = arrived.message
        if times is not None:  # the engine's stages, from when its batch ended
            decoded = message.ran_s - message.inference_s
            started = decoded - message.decode_s
            times.note(started - message.queue_s, started, decoded, message.ran_s, before_s=decode_s)
            times.model, times.version = self.name, self.model.version
        return Answer(arrived.value, message.best, geometry)

    async def _pixels_in(
        self, image: bytes | np.ndarray, held: Held | None
    ) -> tuple[np.ndarray | None, Geometry, float]:
        """Write the image's pixels into the slot held (None back), or return them to travel inline; where
        they went, and the decode time. Decode errors (400, 413) are raised here, before the engine sees
        anything, and the slot goes back: at once, or when a decoding thread stops writing into it."""
        try:
            return await self._write_pixels(image, held)
        except BaseException:
            if held not in self._written_late:
                self.link.release(held)
            raise

    async def _write_pixels(
        self, image: bytes | np.ndarray, held: Held | None
    ) -> tuple[np.ndarray | None, Geometry, float]:
        if isinstance(image, np.ndarray):
            height, width = (image.shape[0], image.shape[1]) if image.dtype == np.uint8 else image.shape[1:3]
            geometry = Geometry.identity(width, height)
            if held is None:
                return image, geometry, 0.0
            held.pool.slots.pixels(held.slot, self._shape)[:] = image
            return None, geometry, 0.0
        started = time.monotonic()
        target = held.pool.slots.pixels(held.slot, self._shape) if held is not None else np.empty(self._shape, np.uint8)
        spec, limit = self.model.input_spec, self.link.max_image_pixels
        if len(image) > DECODE_OFF_LOOP_BYTES:
            decoding = asyncio.get_running_loop().run_in_executor(None, decode_into, image, spec, limit, target)
            try:
                geometry = await asyncio.shield(decoding)
            except asyncio.CancelledError:
                if held is not None and not decoding.done():  # the thread still writes into the slot
                    self._written_late.add(held)
                    decoding.add_done_callback(partial(self._decoded_late, held))
                raise
        else:
            geometry = decode_into(image, spec, limit, target)
        return (None if held is not None else target), geometry, time.monotonic() - started


class RemoteModels:
    """What the handlers may ask of the models (torchrest.served.ServedModels), answered from the engine's
    Snapshot or by a Call."""

    def __init__(
        self,
        socket_path: Path,
        frontend: int,
        slots: SlotPools | None,
        max_image_pixels: int,
        metrics: Metrics,
        frontends: int = 1,
    ) -> None:
        self.link = EngineLink(
            frontend, slots, max_image_pixels, metrics, frontends, told=self.update, engine_lost=self.engine_lost
        )
        self.socket_path = socket_path
        self.entries: dict[str, RemoteEntry] = {}
        self.default_name = ""
        self._not_ready: str | None = "connecting to the engine process"
        self._generation = -1
        self._told: asyncio.Event | None = None  # set by the first Snapshot

    async def open(self, failed: Callable[[], None]) -> None:
        """Connect to the engine (it may still be starting) and wait for its first Snapshot, so that this
        front-end opens its ports knowing what the engine has; the handlers answer 503 until a Snapshot says
        the models are ready. (Whether the engine's models loaded is the supervisor's to act on: `failed`
        is not called.)"""
        loop = asyncio.get_running_loop()
        self._told = asyncio.Event()
        deadline = loop.time() + CONNECT_TIMEOUT_S
        while True:
            try:
                await loop.create_unix_connection(lambda: self.link, str(self.socket_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self.link.send(Hello(self.link.frontend, os.getpid()))
        await asyncio.wait_for(self._told.wait(), max(1.0, deadline - loop.time()))

    async def close(self) -> None:
        self.link.close()

    def exit_status(self) -> int:
        return 0

    # -- the engine's word -----------------------------------------------------------------------------
    def update(self, snapshot: Snapshot) -> None:
        if snapshot.generation < self._generation:
            return
        self._generation = snapshot.generation
        self.default_name = snapshot.default
        self._not_ready = snapshot.not_ready
        known = self.entries
        self.entries = {}
        for entry in snapshot.entries:
            runtime = None
            if entry.runtime is not None:
                previous = known.get(entry.name)
                runtime = previous.runtime if previous is not None and previous.model == entry.model else None
                if runtime is None or runtime.info != entry.runtime:  # a new model, version or layout
                    runtime = RemoteRuntime(self.link, entry, entry.runtime)
            self.entries[entry.name] = RemoteEntry(entry.name, entry.model, runtime, entry.state, entry.reason)
            self.link.pool_for(math.prod((*entry.model.input_spec.size, 3)))  # its slots, before its first image
        if self._told is not None:
            self._told.set()

    def engine_lost(self) -> None:
        self._not_ready = "the engine process is down"
        for entry in self.entries.values():
            entry.runtime = None
            entry.state, entry.reason = "UNAVAILABLE", "the engine process is down"

    # -- lookup (ModelManager's) ---------------------------------------------------------------------------
    @property
    def default(self) -> str:
        return self.default_name or next(iter(self.entries), "")

    def entry(self, name: str | None, version: str | None = None) -> RemoteEntry:
        if not self.entries and self._not_ready:
            raise NotReady(self._not_ready)  # no Snapshot yet, or the engine is gone
        return look_up(self.entries, name, version, self.default)

    def runtime(self, name: str | None, version: str | None = None) -> RemoteRuntime:
        entry = self.entry(name, version)
        return serving(entry, entry.runtime)

    def not_ready_reason(self) -> str | None:
        return self._not_ready

    # -- asked of the engine -----------------------------------------------------------------------------
    async def index(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = await self.link.call("index")
        return rows

    async def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, object]]:
        if name is not None:
            self.entry(name, version)  # 400/404 here, as in one process
        rows: list[dict[str, object]] = await self.link.call("statistics", name, version)
        return rows

    async def activity(self) -> dict[str, dict[str, object]]:
        rows: dict[str, dict[str, object]] = await self.link.call("activity")
        return rows

    async def load(self, name: str) -> RemoteEntry:
        check_model_name(name)
        await self.link.call("load", name)
        # the Snapshot the engine published after the load came before the call's answer, on this connection
        return self.entry(name)

    async def unload(self, name: str) -> None:
        self.entry(name)
        await self.link.call("unload", name)
