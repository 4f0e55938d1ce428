"""The front-end's end of its connection to the engine process: requests and calls in flight, the slots
they hold, and the engine's word as it comes. Its owner, RemoteModels (torchrest.frontend.remote), opens
it and is told through callbacks; the link knows nothing of the models.

    RemoteRuntime.infer -> take_slot (a Pool's: torchrest.slots) -> request(Infer) --> engine
        <-- Answered: the answer copied out of the slot, the slot given back -> Arrived | Failed: its error
    RemoteModels -> call(method): request(Call) --> engine <-- Returned: its value | Failed: its error
    engine --> Snapshot -> told(snapshot) (RemoteModels.update) | Pulse -> queues (read by admission)
    connection lost -> engine_lost() (the models are marked down), then every waiter fails with 503
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from torchrest.errors import NotReady
from torchrest.messages import Answered, Call, Cancel, Connection, Failed, Observe, Pulse, Returned, Slots, Snapshot
from torchrest.metrics import Metrics
from torchrest.slots import Pool, SlotPools

log = logging.getLogger("torchrest.frontend")


class Held(NamedTuple):
    """A slot a request holds, until the engine's final word on it."""

    pool: Pool
    slot: int


class Arrived(NamedTuple):
    """An Answered message and its answer (copied out of the slot as the message arrived)."""

    message: Answered
    value: np.ndarray


class EngineLink(Connection):
    """The front-end's end of its connection to the engine: calls in flight, and the slots they hold."""

    def __init__(
        self,
        frontend: int,
        slots: SlotPools | None,
        max_image_pixels: int,
        metrics: Metrics,
        frontends: int = 1,
        *,
        told: Callable[[Snapshot], None],
        engine_lost: Callable[[], None],
    ) -> None:
        super().__init__()
        self.told = told  # each Snapshot the engine sends (the models' owner: torchrest.frontend.remote)
        self.engine_lost = engine_lost  # called once the connection is gone, before the waiters fail
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
            self.told(message)
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
        self.engine_lost()
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
