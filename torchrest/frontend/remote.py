"""The engine's models as a front-end process sees them: what the handlers may ask (torchrest.served), over
the link to the engine.

    handler -> RemoteModels.runtime(name) -> room_for, then admitted(RemoteRuntime) (the engine's last
    Pulse: 503 before the body is read, and again after it) -> infer: decode into a slot (torchrest.slots)
    for the model's input size, Infer --> engine ... Answered -> the answer copied out of the slot -> Answer,
    with the Geometry the decode gave

What a handler reads without waiting (which models, their states, readiness) comes from the engine's
last Snapshot; what changes per request (statistics, the web page's figures) and what acts (load,
unload) is a Call answered by the engine. When the engine goes away every request waiting on it fails
with 503 and /health says so at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from torchrest.admission import Admission
from torchrest.errors import NotReady, QueueFull
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
)
from torchrest.metrics import Metrics
from torchrest.preprocess import decode_into
from torchrest.served import RuntimeInfo, check_model_name, look_up, serving
from torchrest.slots import SlotFile, SlotPools
from torchrest.tasks.registry import Answer, Geometry
from torchrest.timing import StageTimes

log = logging.getLogger("torchrest.frontend")

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


class Arrived(NamedTuple):
    """An Answered message and its answer (copied out of the slot as the message arrived)."""

    message: Answered
    value: np.ndarray


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


class Pool:
    """One slot file of this front-end's and the requests waiting for a slot of it: when every slot holds an
    image in flight, a request waits for the engine to answer one (those images are its queue anyway:
    waiting costs nothing, a copy inline would)."""

    def __init__(self, size: int, slots: SlotFile) -> None:
        self.size = size
        self.slots = slots
        self.waiters: deque[asyncio.Future[int]] = deque()

    async def take(self) -> int:
        slot = self.slots.acquire()
        if slot >= 0:
            return slot
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed over just as the client left
            raise

    def release(self, slot: int) -> None:
        """Give a slot back: to the longest waiting request, else to the free list."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self.slots.release(slot)


class Held(NamedTuple):
    """A slot a request holds, until the engine's final word on it."""

    pool: Pool
    slot: int


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
        self.link = EngineLink(self, frontend, slots, max_image_pixels, metrics, frontends)
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


class EngineLink(Connection):
    """The front-end's end of its connection to the engine: calls in flight, and the slots they hold."""

    def __init__(
        self,
        models: RemoteModels,
        frontend: int,
        slots: SlotPools | None,
        max_image_pixels: int,
        metrics: Metrics,
        frontends: int = 1,
    ) -> None:
        super().__init__()
        self.models = models
        self.metrics = metrics
        self._observed: dict[str, list[float]] = {}
        self.frontend = frontend
        self.frontends = frontends  # how many front-ends share the engine (the kernel spreads connections evenly)
        self.slots = slots  # None: every image travels inline (tests, benchmarks)
        self.pools: dict[int, Pool | None] = {}  # by slot size
        self.max_image_pixels = max_image_pixels
        self.queues: dict[str, tuple[int, float]] = {}
        self._calls = itertools.count()
        self._pending: dict[int, tuple[asyncio.Future[Any], Held | None]] = {}

    def observe(self, model: str, total_s: float) -> None:
        """A request's total time, for the engine's recent figures: sent with this loop turn's messages."""
        self._observed.setdefault(model, []).append(total_s)
        self.send_soon()

    def before_flush(self) -> None:
        observed, self._observed = self._observed, {}
        for model, totals in observed.items():
            self.send(Observe(model, tuple(totals)))

    async def request(self, message: Any, held: Held | None = None) -> Any:
        """Send `message(call)` and wait for its answer. If the waiter is cancelled (the client left), the
        engine is told to drop the job; the slot `held` stays taken until the engine's final word on it."""
        if self.transport is None:
            self.release(held)
            raise NotReady("the engine process is down")
        call = next(self._calls)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call] = (future, held)
        self.send(message(call))
        try:
            return await future
        except asyncio.CancelledError:
            self.send(Cancel(call))
            raise

    async def call(self, method: str, *args: Any) -> Any:
        return await self.request(lambda call: Call(call, method, args))

    def pool_for(self, nbytes: int) -> Pool | None:
        """The pool of slots for images of `nbytes`, made (and the engine told of it) the first time; None
        where /dev/shm has no room for it: the pixels then travel inline."""
        if self.slots is None:
            return None
        size, slots, new = self.slots.for_pixels(nbytes)
        if new and slots is not None:
            self.send(Slots(size, str(slots.path), slots.count))  # ahead of any Infer that uses it
            self.pools[size] = Pool(size, slots)
        return self.pools.get(size)

    async def take_slot(self, nbytes: int) -> Held | None:
        """A slot for an image of `nbytes`, waiting for one when all of its pool's are taken (None: inline)."""
        pool = self.pool_for(nbytes)
        return Held(pool, await pool.take()) if pool is not None else None

    def release(self, held: Held | None) -> None:
        if held is not None:
            held.pool.release(held.slot)

    def received(self, message: Any) -> None:
        if isinstance(message, Pulse):
            self.queues = message.queues
            return
        if isinstance(message, Snapshot):
            self.models.update(message)
            return
        future, held = self._pending.pop(message.call, (None, None))
        if future is None:
            return
        if future.done():  # cancelled: the engine is done with the slot now
            self.release(held)
            return
        if isinstance(message, Answered):
            value = self._answer_of(message, held)  # read before the slot can be taken again
            self.release(held)
            future.set_result(Arrived(message, value))
        elif isinstance(message, Failed):
            self.release(held)
            future.set_exception(message.error.rebuilt())
        elif isinstance(message, Returned):
            future.set_result(message.value)

    @staticmethod
    def _answer_of(message: Answered, held: Held | None) -> np.ndarray:
        """The answer: as it came in the message, or copied out of its slot."""
        if message.inline is not None:
            return np.asarray(message.inline)
        assert held is not None, "an answer with no slot comes inline"
        return held.pool.slots.answer(held.slot, message.shape, message.dtype)

    def lost(self) -> None:
        log.error("front-end %d lost the engine process", self.frontend)
        self.models.engine_lost()
        pending, self._pending = self._pending, {}
        waiting = [future for future, _ in pending.values()]
        for _, held in pending.values():
            self.release(held)  # no answer will come to free it
        for pool in self.pools.values():
            if pool is not None:
                waiting += pool.waiters
                pool.waiters.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(NotReady("the engine process is down"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
