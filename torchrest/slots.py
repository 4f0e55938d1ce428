"""Shared-memory slots: where a front-end's decoded pixels meet the engine's batch, and its answer row
comes back.

    front-end: acquire() -> decode into pixels(slot) -> Infer(slot) ... Answered -> answer(slot) -> release
    engine:    pixels(slot) copied once into the batch buffer; the answer's row written into answer(slot)

One file per front-end in /dev/shm (`torchrest-<server pid>-<front-end>-<nonce>`), created and unlinked by
that front-end, mapped by the engine; the supervisor removes what a killed process left (`remove_left`).
A plain file and mmap rather than multiprocessing.shared_memory: its resource tracker would unlink a
segment that the engine merely attached to when the engine exits (Python 3.11 has no `track=False`).
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import secrets
from pathlib import Path

import numpy as np

log = logging.getLogger("torchrest.slots")

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
PREFIX = "torchrest-"
ANSWER_BYTES = 4 * 4096  # room for 4096 float32 class probabilities after the pixels


def slot_bytes_for(crop_size: int) -> int:
    """A slot holds one (S, S, 3) uint8 image and its answer row, rounded up to a page."""
    size = crop_size * crop_size * 3 + ANSWER_BYTES
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


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
    def create_fitting(
        cls, server_pid: int, frontend: int, counts: tuple[int, ...], slot_bytes: int
    ) -> SlotFile | None:
        """The first of `counts` slots that shared memory has room for (a container's /dev/shm is often
        64 MiB), or None: the pixels then travel inline, one copy more."""
        for count in counts:
            try:
                return cls.create(server_pid, frontend, count, slot_bytes)
            except OSError as exc:
                log.warning("no room for %d slots of %d KiB in %s: %s", count, slot_bytes // 1024, SHM_DIR, exc)
        return None

    @classmethod
    def attach(cls, path: str, count: int, slot_bytes: int) -> SlotFile:
        return cls(Path(path), count, slot_bytes, create=False)

    # the owner's side: which slots are free
    def acquire(self) -> int:
        """A free slot, or -1 when every slot is taken (the caller then sends its pixels inline)."""
        return self._free.pop() if self._free else -1

    def release(self, slot: int) -> None:
        self._free.append(slot)

    # both sides
    def pixels(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        return self._array[slot, :size].reshape(shape)

    def answer(self, slot: int, classes: int) -> np.ndarray:
        return self._array[slot, self.slot_bytes - ANSWER_BYTES :].view(np.float32)[:classes]

    def fits(self, shape: tuple[int, ...], classes: int = 0) -> bool:
        return math.prod(shape) <= self.slot_bytes - ANSWER_BYTES and classes * 4 <= ANSWER_BYTES

    def close(self) -> None:
        del self._array
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass
        if self.owner:
            self.path.unlink(missing_ok=True)


def remove_left(server_pid: int, frontend: int | None = None) -> list[Path]:
    """Remove the slot files of this server (or of one of its front-ends) that a killed process left."""
    pattern = f"{PREFIX}{server_pid}-{'' if frontend is None else f'{frontend}-'}*"
    removed = []
    for path in SHM_DIR.glob(pattern):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
