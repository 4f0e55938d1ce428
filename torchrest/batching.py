"""Stage 3: admission control and the adaptive batcher between the event loop and the inference threads.

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

from torchrest.errors import NotReady, QueueFull

Clock = Callable[[], float]


@dataclass(slots=True)
class StageTimes:
    """Where one request's time went, for its Server-Timing header: the longest of its images' waits,
    and the decode and model run of the batches they were in (seconds)."""

    queue_s: float = 0.0
    decode_s: float = 0.0
    inference_s: float = 0.0

    def note(self, queue_s: float, decode_s: float, inference_s: float) -> None:
        self.queue_s = max(self.queue_s, queue_s)
        self.decode_s = max(self.decode_s, decode_s)
        self.inference_s = max(self.inference_s, inference_s)

    def header(self, total_s: float) -> str:
        stages = (("queue", self.queue_s), ("decode", self.decode_s), ("inference", self.inference_s))
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in (*stages, ("total", total_s)))


@dataclass(slots=True)
class Job:
    """One request on its way through the batcher."""

    # encoded bytes, decoded by the runtime into the batch buffer just before the model runs; or a
    # tensor a client sent already pre-processed: (S, S, 3) uint8, or (3, S, S) float32 normalised
    image: Any
    deadline_s: float  # monotonic clock
    enqueued_s: float
    request_id: str
    future: Any  # asyncio.Future[np.ndarray], resolved on the event loop by the runtime
    times: StageTimes | None = None  # filled by the runtime thread before the future resolves

    def abandoned(self) -> bool:
        """The caller went away (cancelled future): computing this row would be wasted work."""
        return bool(self.future.done())


@dataclass(slots=True)
class Taken:
    batch: list[Job]
    expired: list[Job]
    abandoned: list[Job]


class Admission:
    """Bounds the requests a model holds (decoding, queued or running), and refuses at once (503) one
    that the queue ahead of it would keep past its deadline.

    The expected wait is the places already taken times the recent time per image (measured on the
    instances' batches, `observe`), over the instances: a request refused with a `Retry-After` of that
    wait costs nothing, where one admitted to expire in the queue would have cost its body, its decode
    and a 504. Only the event loop admits and releases, so a plain counter is enough; `observe` is
    called from the instances' threads and only replaces a float.
    """

    SMOOTHING = 0.2  # weight of the newest batch in the time per image

    def __init__(self, max_in_flight: int, instances: int = 1) -> None:
        self.max_in_flight = max_in_flight
        self.instances = instances
        self.in_flight = 0
        self.seconds_per_image = 0.0  # 0 until a batch has been measured: nothing is refused for time

    def admit(self, count: int = 1, deadline_s: float | None = None, now_s: float | None = None) -> None:
        """Take `count` places (one per image), all or none."""
        if self.in_flight + count > self.max_in_flight:
            if count > self.max_in_flight:
                raise QueueFull(f"{count} images in one request is over this model's queue of {self.max_in_flight}")
            raise QueueFull(
                f"queue is full ({self.max_in_flight} requests waiting); retry shortly", self.expected_wait_s()
            )
        if deadline_s is not None:
            wait_s = self.expected_wait_s(count)
            now_s = time.monotonic() if now_s is None else now_s
            if wait_s > 0 and now_s + wait_s > deadline_s:
                raise QueueFull(
                    f"the queue ahead would take about {wait_s:.1f} s, past this request's deadline "
                    f"({max(0.0, deadline_s - now_s):.1f} s left); retry later",
                    wait_s,
                )
        self.in_flight += count

    def release(self, count: int = 1) -> None:
        self.in_flight -= count

    def expected_wait_s(self, count: int = 1) -> float:
        """How long `count` more images would take to be answered, from what is in flight now."""
        return (self.in_flight + count) * self.seconds_per_image / self.instances

    def observe(self, images: int, seconds: float) -> None:
        """An instance took `seconds` from taking a batch of `images` to answering it."""
        per_image = seconds / images
        previous = self.seconds_per_image
        self.seconds_per_image = per_image if previous == 0 else previous + self.SMOOTHING * (per_image - previous)


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
