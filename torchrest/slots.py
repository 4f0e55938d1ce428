"""Shared-memory slots: where a front-end's decoded pixels meet the engine's batch, and where the answer comes
back, whatever its size (a row of probabilities, an embedding, a list of boxes, a class map).

    front-end: slots for the image's size -> decode into pixels(slot) -> Infer(pool, slot) ... Answered(shape,
               dtype) -> answer(slot) copied out -> release
    engine:    pixels(slot) copied once into the batch buffer; once the batch has run, its answer written
               over the same slot (the pixels are in the batch by then)

A front-end keeps a pool of slots per size (SlotPools): one file for each size its models' inputs need,
made the first time it is needed, each in /dev/shm (`torchrest-<server pid>-<front-end>-<nonce>`), created
and unlinked by that front-end and mapped by the engine (a Slots message says where); the supervisor removes
what a killed process left (`remove_left`). On the front-end's event loop, a Pool hands out one file's
slots, a request waiting its turn when all are taken; the link to the engine (torchrest.frontend.link) takes
a slot for each request and gives it back on the engine's final word.

A plain file and mmap rather than multiprocessing.shared_memory: its resource tracker would unlink a segment
that the engine merely attached to when the engine exits (Python 3.11 has no `track=False`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import mmap
import os
import secrets
from collections import deque
from pathlib import Path

import numpy as np

log = logging.getLogger("torchrest.slots")

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
PREFIX = "torchrest-"
SMALLEST_SLOT = 256 * 1024  # a 256 x 256 image; and room for any answer to a small model
POOL_BYTES = 32 * 1024 * 1024  # one pool's share of /dev/shm: 64 slots (MAX_SLOTS) of 256 KiB ... 8 of 4 MiB
MAX_SLOTS = 64  # images in flight per pool (more wait for a free slot: they are the engine's queue anyway)
MIN_SLOTS = 4  # where /dev/shm has no room for this many, the pixels travel inline


def slot_bytes_for(nbytes: int) -> int:
    """The slot size that holds `nbytes`: a power of two from SMALLEST_SLOT up (so few sizes, few files)."""
    size = SMALLEST_SLOT
    while size < nbytes:
        size *= 2
    return size


class SlotFile:
    """`count` slots of `slot_bytes` each, in one mapped file."""

    def __init__(self, path: Path, count: int, slot_bytes: int, create: bool) -> None:
        self.path = path
        self.count = count
        self.slot_bytes = slot_bytes
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                # reserve the pages now: a full tmpfs then fails here (OSError), not later with SIGBUS
                os.posix_fallocate(fd, 0, count * slot_bytes)
            self._map = mmap.mmap(fd, count * slot_bytes)
        except OSError:
            if create:
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._array = np.frombuffer(self._map, np.uint8).reshape(count, slot_bytes)
        self._free = list(range(count - 1, -1, -1)) if create else []
        self.owner = create

    @classmethod
    def create(cls, server_pid: int, frontend: int, count: int, slot_bytes: int) -> SlotFile:
        path = SHM_DIR / f"{PREFIX}{server_pid}-{frontend}-{secrets.token_hex(4)}"
        return cls(path, count, slot_bytes, create=True)

    @classmethod
    def create_fitting(cls, server_pid: int, frontend: int, slot_bytes: int) -> SlotFile | None:
        """As many slots of `slot_bytes` as a pool's share allows (at most MAX_SLOTS), fewer where /dev/shm has
        less room (a container's is often 64 MiB), or None: the pixels then travel inline, one copy more."""
        count = max(MIN_SLOTS, min(MAX_SLOTS, POOL_BYTES // slot_bytes))
        while count >= MIN_SLOTS:
            try:
                return cls.create(server_pid, frontend, count, slot_bytes)
            except OSError as exc:
                log.warning("no room for %d slots of %d KiB in %s: %s", count, slot_bytes // 1024, SHM_DIR, exc)
                count //= 2
        return None

    @classmethod
    def attach(cls, path: str, count: int, slot_bytes: int) -> SlotFile:
        return cls(Path(path), count, slot_bytes, create=False)

    # the owner's side: which slots are free
    def acquire(self) -> int:
        """A free slot, or -1 when every slot is taken."""
        return self._free.pop() if self._free else -1

    def release(self, slot: int) -> None:
        self._free.append(slot)

    # both sides
    def pixels(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        return self._array[slot, : math.prod(shape)].reshape(shape)

    def put(self, slot: int, answer: np.ndarray) -> bool:
        """Write `answer` over the slot (its pixels are in the batch by now); False when it does not fit."""
        if answer.nbytes > self.slot_bytes:
            return False
        self._array[slot, : answer.nbytes] = np.ascontiguousarray(answer).reshape(-1).view(np.uint8)
        return True

    def answer(self, slot: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A copy of the answer the engine wrote over `slot`."""
        kind = np.dtype(dtype)
        nbytes = math.prod(shape) * kind.itemsize
        return self._array[slot, :nbytes].view(kind).reshape(shape).copy()

    def close(self) -> None:
        del self._array
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass
        if self.owner:
            self.path.unlink(missing_ok=True)


class SlotPools:
    """A front-end's slot files, one per slot size, each made the first time an image of its size comes."""

    def __init__(self, server_pid: int, frontend: int) -> None:
        self.server_pid = server_pid
        self.frontend = frontend
        self.files: dict[int, SlotFile | None] = {}  # slot size -> its file (None: /dev/shm had no room)

    def for_pixels(self, nbytes: int) -> tuple[int, SlotFile | None, bool]:
        """The pool (its slot size, its file or None) for images of `nbytes`, and whether it is new (the
        engine has to be told where it is)."""
        size = slot_bytes_for(nbytes)
        if size in self.files:
            return size, self.files[size], False
        self.files[size] = SlotFile.create_fitting(self.server_pid, self.frontend, size)
        return size, self.files[size], self.files[size] is not None

    def close(self) -> None:
        for slots in self.files.values():
            if slots is not None:
                slots.close()
        self.files.clear()


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


def remove_left(server_pid: int, frontend: int | None = None) -> list[Path]:
    """Remove the slot files of this server (or of one of its front-ends) that a killed process left."""
    pattern = f"{PREFIX}{server_pid}-{'' if frontend is None else f'{frontend}-'}*"
    removed = []
    for path in SHM_DIR.glob(pattern):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
