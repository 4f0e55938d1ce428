"""A model's instances: one inference thread per backend, each supervised, and the lending of every core
to a batch that runs alone.

    ModelRuntime.start -> Instances.start(serve): a thread per instance runs `serve(instance)` until the
    queue closes; if the instance dies (an unusable backend, or anything escaping `serve`), it is marked
    down (/health turns not-ready), re-opened after a back-off (1 s, doubling up to 30 s while re-opening
    fails), and serves again

A batch the model raises on fails alone (the runtime answers 500); only an error that leaves the backend
unusable (out of memory, a CUDA fault) ends the instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchrest.backends import Backend
from torchrest.errors import first_line

log = logging.getLogger("torchrest.runtime")

RESTART_BACKOFF_S = (1.0, 30.0)  # first wait before re-opening a dead instance, and the most it grows to
# errors after which a backend cannot be trusted with the next batch: re-open it rather than retry
FATAL_ERRORS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate memory",
    "not enough memory",
    "cuda error",
    "device-side assert",
    "illegal memory access",
    "cudnn_status",
    "cublas_status",
)


class InstanceDied(Exception):
    """The backend failed in a way that leaves it unusable; the instance must be re-opened."""


def is_fatal(exc: BaseException) -> bool:
    """An error that leaves the backend unusable (memory exhausted, device fault), judged by its text:
    the libraries raise RuntimeError for these as for any other failure."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(marker in text for marker in FATAL_ERRORS)


@dataclass(slots=True)
class Instance:
    """One inference thread and the backend it owns; `down` says why it is not serving (None: serving)."""

    index: int
    backend: Backend
    down: str | None = None
    restarts: int = 0
    last_answered_s: float = 0.0  # when its last batch was answered (monotonic clock)
    busy: bool = False  # running a batch (read by the event loop: a hint, not a lock)


class Instances:
    """The instances of one model and their threads. `reopen` opens a fresh backend for an instance that
    died (None: it cannot be restarted); `check` runs a re-opened backend once before it serves."""

    def __init__(
        self,
        model: str,
        backends: list[Backend],
        reopen: Callable[[], Backend] | None,
        check: Callable[[Backend], None],
        restarts: Any,
    ) -> None:
        self.model = model
        self.all = [Instance(index, backend) for index, backend in enumerate(backends)]
        self.reopen = reopen
        self.check = check
        self._restarts = restarts  # the model's Prometheus counter
        self._threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    def __len__(self) -> int:
        return len(self.all)

    @property
    def backends(self) -> list[Backend]:
        return [instance.backend for instance in self.all]

    def not_ready_reason(self) -> str | None:
        """None when every instance serves; else which are down and why (for /health)."""
        down = [f"instance {i.index} is restarting after {i.down}" for i in self.all if i.down]
        return "; ".join(down) or None

    def one_is_free(self) -> bool:
        return any(not instance.busy and instance.down is None for instance in self.all)

    def start(self, serve: Callable[[Instance], None]) -> None:
        for instance in self.all:
            thread = threading.Thread(
                target=self._supervise, args=(instance, serve), name=f"infer-{self.model}-{instance.index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def join(self, timeout_s: float) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _supervise(self, instance: Instance, serve: Callable[[Instance], None]) -> None:
        """The instance thread: serve until the queue closes; if the instance dies, re-open and go on."""
        backoff_s = RESTART_BACKOFF_S[0]
        while True:
            try:
                serve(instance)
                return  # the queue was closed: shutting down
            except BaseException as exc:  # noqa: BLE001 - whatever ended the loop, the thread lives on
                if instance.down is None:  # it died outside a batch (setting up its thread)
                    instance.down = f"{type(exc).__name__}: {first_line(exc)}"
                    log.error("model %s instance %d died: %s", self.model, instance.index, instance.down)
                if self.stopping.is_set() or self.reopen is None:
                    log.error("model %s instance %d stopped: %s", self.model, instance.index, instance.down)
                    return
            while not self.stopping.wait(backoff_s):
                try:
                    backend = self.reopen()
                    backend.prepare_thread()
                    self.check(backend)
                except Exception as exc:  # noqa: BLE001 - a failed restart is retried, longer apart
                    backoff_s = min(2 * backoff_s, RESTART_BACKOFF_S[1])
                    log.error(
                        "model %s instance %d failed to restart (next try in %.0f s): %s",
                        self.model,
                        instance.index,
                        backoff_s,
                        first_line(exc),
                    )
                    continue
                instance.backend = backend
                instance.restarts += 1
                instance.down = None
                self._restarts.inc()
                log.warning("model %s instance %d restarted", self.model, instance.index)
                break


class CoreLending:
    """A lone batch gets every core: with several instances (each its share of the threads), a batch about
    to enter the model while no other is in it and none is queued runs on the model's whole budget
    (`Backend.alone`), and a batch that comes meanwhile waits for it (one batch at most) rather than crowd
    its cores. Under load the batches run side by side, as laid out."""

    def __init__(self, queued: Callable[[], int]) -> None:
        self._queued = queued
        self._cores = threading.Condition()
        self._running = 0  # batches in the model now
        self._lent = False  # one of them has every core

    def claim(self) -> bool:
        """Before a batch enters the model: wait while a lone batch has every core; then take every core
        when this batch is alone. True when it has them."""
        with self._cores:
            while self._lent:
                self._cores.wait()
            self._lent = self._running == 0 and not self._queued()
            self._running += 1
            return self._lent

    def release(self, lent: bool) -> None:
        with self._cores:
            self._running -= 1
            if lent:
                self._lent = False
                self._cores.notify_all()
