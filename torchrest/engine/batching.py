"""The adaptive batcher between the event loop and the inference threads (admission: torchrest.admission).

    api (event loop) --admit()--> read body --put(Job)--> BatchQueue --take()--> runtime thread(s)

The policy: an instance that is free takes every waiting job up to `max_batch_size` at once, so a lone
request runs immediately and batches grow by themselves exactly when the model is the bottleneck. A
positive `max_wait_s` lets the first job wait that long for company. Jobs whose deadline has passed are
handed back separately and never reach the model. The clock is injectable so tests drive time by hand.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchrest.errors import NotReady
from torchrest.timing import StageTimes

Clock = Callable[[], float]


@dataclass(slots=True)
class Job:
    """One image of a request on its way through the batcher."""

    # encoded bytes, decoded by the runtime into the batch buffer just before the model runs; or a
    # tensor a client sent already pre-processed: (h, w, 3) uint8, or (3, h, w) float32 normalised
    image: Any
    deadline_s: float  # monotonic clock
    enqueued_s: float
    request_id: str
    future: Any  # asyncio.Future[tasks.Answer], resolved on the event loop by the runtime
    times: StageTimes | None = None  # filled by the runtime thread before the future resolves
    task: str = ""  # what the request asks of the model (one of its tasks)
    options: Any = None  # the task's options for this request (detect: its thresholds)
    geometry: Any = None  # where its pixels went (tasks.Geometry), once decoded

    def abandoned(self) -> bool:
        """The caller went away (cancelled future): computing this row would be wasted work."""
        return bool(self.future.done())


@dataclass(slots=True)
class Taken:
    batch: list[Job]
    expired: list[Job]
    abandoned: list[Job]


class BatchQueue:
    """FIFO of admitted jobs (encoded images or pixel arrays, decoded later by the instance that runs them)
    shared by a model's instances."""

    def __init__(self, max_batch_size: int, max_wait_s: float = 0.0, now: Clock = time.monotonic) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._now = now
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        with self._ready:
            if self._closed:  # the model was unloaded between admission and now
                raise NotReady("the model is being unloaded")
            self._jobs.append(job)
            self._ready.notify()

    def close(self) -> None:
        """Wake every waiting instance; `take` returns None once the queue is empty."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def take(self) -> Taken | None:
        """Block until there is work; return up to max_batch_size live jobs, plus the dead ones.

        Returns None when the queue is closed and empty.
        """
        with self._ready:
            while not self._jobs:
                if self._closed:
                    return None
                self._ready.wait()
            if self.max_wait_s > 0:
                self._wait_for_company()
            taken = Taken([], [], [])
            now = self._now()
            while self._jobs and len(taken.batch) < self.max_batch_size:
                job = self._jobs.popleft()
                if job.abandoned():
                    taken.abandoned.append(job)
                elif job.deadline_s <= now:
                    taken.expired.append(job)
                else:
                    taken.batch.append(job)
            if self._jobs:
                self._ready.notify()  # more work than one batch: wake another free instance
            return taken

    def _wait_for_company(self) -> None:
        flush_at = self._jobs[0].enqueued_s + self.max_wait_s
        while len(self._jobs) < self.max_batch_size and not self._closed:
            remaining = flush_at - self._now()
            if remaining <= 0:
                return
            self._ready.wait(remaining)
