"""Every message between a front-end process and the engine process, declared once (as
`grpc/inference.proto` declares the gRPC surface), and the one connection type both sides speak.

    front-end                                      engine
    Hello(frontend, pid)                           ->
    Slots(pool, path, count)                       ->  a slot file to map (one per slot size, made on need)
    Infer(call, model, task, options, pool, slot | pixels, deadline_s, ...)  ->  admit, queue, batch, run
                                                   <-  Answered(call, shape, dtype, stage times) (in the slot)
                                                   <-  Failed(call, error)                 (4xx/5xx, slot free)
    Cancel(call)                                   ->  the job is dropped before the model; then Failed
    Observe(model, totals_s)                       ->  requests' total times, for /web/stats
    Call(call, method, args)                       ->  load, unload, index, statistics, activity
                                                   <-  Returned(call, value) | Failed(call, error)
                                                   <-  Snapshot(...)   models, states, readiness: on change
                                                   <-  Pulse(...)      queue figures, ten times a second

Decoded pixels never travel in a message: the front-end writes them once into a slot of its shared
memory (torchrest.slots), the engine copies them once into the batch, and writes the answer (whatever its
task: a row of probabilities, a vector, boxes, a class map) back over the same slot. Messages are small
tuples, pickled, each framed by its length; what one side sends within one turn of its event loop leaves
in one write.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from torchrest.errors import TorchrestError, all_errors
from torchrest.model_input import InputSpec
from torchrest.served import RuntimeInfo
from torchrest.tasks.registry import Heads

LENGTH = struct.Struct("<I")
MAX_MESSAGE_BYTES = 1 << 30  # a v2 request may carry float tensors inline; anything larger is a broken peer


# -- front-end -> engine ------------------------------------------------------------------------------
class Hello(NamedTuple):
    frontend: int  # the front-end's index (0..N-1), for logs
    pid: int


class Slots(NamedTuple):
    """A shared-memory file of the front-end's (torchrest.slots.SlotFile) for the engine to map."""

    pool: int  # its slot size in bytes, which names it
    path: str
    slot_count: int


class Infer(NamedTuple):
    call: int
    model: str
    version: str | None
    task: str  # what the request asks of the model
    options: Any  # the task's options (a small tuple, or None)
    pool: int  # the slot file the pixels are in
    slot: int  # -1: the pixels travel inline (/dev/shm had no room, or a float tensor)
    shape: tuple[int, ...]  # of the pixels: (h, w, 3) uint8, or a (3, h, w) float tensor inline
    inline: Any  # np.ndarray when slot == -1, else None
    deadline_s: float  # monotonic clock, which every process of the machine shares
    request_id: str
    trace: Any = None  # with tracing: the request span's identity (torchrest.tracing.Carried)


class Cancel(NamedTuple):
    call: int


class Observe(NamedTuple):
    model: str
    totals_s: tuple[float, ...]  # requests answered since the last Observe


class Call(NamedTuple):
    call: int
    method: str  # one of torchrest.engine.service.CALLS
    args: tuple[Any, ...]


# -- engine -> front-end ------------------------------------------------------------------------------
class Answered(NamedTuple):
    call: int
    best: int  # classify: the most probable class; else -1
    shape: tuple[int, ...]  # the answer's array (tasks.Answer.value), written over the slot
    dtype: str
    inline: Any  # the array itself when it did not travel in the slot (no slot, or too large), else None
    queue_s: float
    decode_s: float
    inference_s: float
    ran_s: float  # when the batch's run ended (monotonic): the stages' times follow from it


class Failed(NamedTuple):
    call: int
    error: WireError


class Returned(NamedTuple):
    call: int
    value: Any


class WireError(NamedTuple):
    """A TorchrestError, as it crosses: its class by name, its message and its headers (Retry-After)."""

    kind: str
    message: str
    headers: dict[str, str]

    @classmethod
    def of(cls, error: TorchrestError) -> WireError:
        return cls(type(error).__name__, error.message, dict(error.headers))

    def rebuilt(self) -> TorchrestError:
        kind = ERROR_TYPES.get(self.kind, TorchrestError)
        error = kind.__new__(kind)
        TorchrestError.__init__(error, self.message)
        error.headers = self.headers
        return error


_KINDS: list[type[TorchrestError]] = [TorchrestError, *all_errors()]
ERROR_TYPES: dict[str, type[TorchrestError]] = {kind.__name__: kind for kind in _KINDS}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a front-end needs of a model: how to decode for it, what it is for and how its answers read, how
    to name its classes, how to describe it."""

    name: str
    version: str
    labels: list[str]
    input_spec: InputSpec
    pretrained: bool
    metadata: dict[str, object]
    description: dict[str, object]
    tasks: tuple[str, ...]
    heads: Heads | None

    def describe(self) -> dict[str, object]:
        return self.description


@dataclass(frozen=True, slots=True)
class EntryInfo:
    name: str
    model: ModelInfo
    state: str
    reason: str
    runtime: RuntimeInfo | None
    admission: tuple[int, int] = (0, 1)  # (max in flight, instances) of its runtime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The engine's models, sent on connecting and whenever anything in it changes."""

    default: str
    entries: list[EntryInfo]
    not_ready: str | None
    generation: int


@dataclass(frozen=True, slots=True)
class Pulse:
    """Each model's in-flight count and time per image, for admission before a body is read."""

    queues: dict[str, tuple[int, float]] = field(default_factory=dict)


# -- the connection -----------------------------------------------------------------------------------
class Connection(asyncio.Protocol):
    """Length-framed pickled messages over a stream socket. `received` is called for each message on the
    event loop; `send` queues one and flushes once per loop turn, so a batch's answers or a burst of
    requests leave in one write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self.closed = asyncio.get_event_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        start = 0
        while len(inbox) - start >= 4:
            (length,) = LENGTH.unpack_from(inbox, start)
            if length > MAX_MESSAGE_BYTES:
                self.abort("a message over the size limit")
                return
            end = start + 4 + length
            if len(inbox) < end:
                break
            message = pickle.loads(memoryview(inbox)[start + 4 : end])
            start = end
            self.received(message)
        del inbox[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        self.lost()

    # ours
    def received(self, message: Any) -> None:
        raise NotImplementedError

    def lost(self) -> None:
        """The peer went away (or this side closed)."""

    def send(self, message: Any) -> None:
        if self.transport is None:
            return
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._outbox.append(LENGTH.pack(len(payload)))
        self._outbox.append(payload)
        self.send_soon()

    def send_soon(self) -> None:
        """Flush at the end of this loop turn (`before_flush` may add to it)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def before_flush(self) -> None:
        """Last chance to add messages to this loop turn's write."""

    def _flush(self) -> None:
        self.before_flush()  # still scheduled: what it sends joins this write
        self._flush_scheduled = False
        if self.transport is not None and self._outbox:
            self.transport.write(b"".join(self._outbox))
        self._outbox.clear()

    def abort(self, why: str) -> None:
        if self.transport is not None:
            self.transport.abort()
