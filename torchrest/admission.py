"""Admission: how many requests a model holds, and which it refuses at once (503 + Retry-After) before
any work is done. The engine's runtime admits for real; a front-end process refuses early what the
engine's queue, as its last Pulse showed it, cannot take in time.

    handler -> room_for(runtime, deadline) (503 before the body) -> body -> with admitted(runtime, deadline)
            as places: ... places.add(n) ... -> released however it ends
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from torchrest.errors import QueueFull


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


class Bounded(Protocol):
    """What takes places in an admission bound: a model's runtime in the engine, or the engine's runtime as a
    front-end process sees it (torchrest.frontend.remote)."""

    def admit(self, count: int = 1, deadline_s: float | None = None) -> None: ...

    def release(self, count: int = 1) -> None: ...


def room_for(runtime: Bounded, deadline_s: float | None = None, count: int = 1) -> None:
    """QueueFull (503) now when `runtime` has no room for `count` more in time; nothing is taken: a request
    checks this before its body is read, and takes its places once it has it (so that a slow upload holds
    no place meanwhile)."""
    runtime.admit(count, deadline_s)
    runtime.release(count)


@contextlib.contextmanager
def admitted(runtime: Bounded, deadline_s: float | None = None, count: int = 1) -> Iterator[Places]:
    """`with admitted(runtime, deadline) as places:` takes places (QueueFull, 503, when there are none or the
    queue would keep them past the deadline) and gives them back however the request ends;
    `places.add(n)` takes more once the request says how many."""
    runtime.admit(count, deadline_s)
    places = Places(runtime, count, deadline_s)
    try:
        yield places
    finally:
        runtime.release(places.count)


class Places:
    """The places one request holds in a model's admission bound."""

    __slots__ = ("runtime", "count", "deadline_s")

    def __init__(self, runtime: Bounded, count: int, deadline_s: float | None) -> None:
        self.runtime = runtime
        self.count = count
        self.deadline_s = deadline_s

    def add(self, count: int) -> None:
        if count > 0:
            self.runtime.admit(count, self.deadline_s)
            self.count += count


class Refusals:
    """Paces refusals (503 queue_full) so that refusing work takes about `budget` of a core at most, at any
    model speed: each refusal's time in the handler (from its request's start to its answer sent) is
    measured, and refusals past the rate that budget allows wait their turn (up to their Retry-After) before
    they are sent, their connections held at no cost. A client that retries at once then retries at the pace
    of its refusals, and a retry storm is throttled where it starts; a few at once (a burst of BURST) go out
    without waiting. What the handler does not see (accepting the connection, parsing it in httptools,
    closing it) comes on top: the share measured in benchmark/overload.py is the one to trust. Budget 0:
    every refusal at once."""

    BURST = 16
    SMOOTHING = 0.1

    def __init__(self, budget: float = 0.1, now: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.cost_s = 0.0005  # until measured: about what one costs (parse, route, admit, answer, close)
        self._now = now
        self._due_s = 0.0  # when the next refusal is due at the paced rate (a token bucket, as time)

    def delay_s(self, limit_s: float) -> float:
        """How long this refusal waits for its turn (at most `limit_s`); its turn is taken."""
        if self.budget <= 0:
            return 0.0
        now = self._now()
        interval = self.cost_s / self.budget
        burst = self.BURST * interval
        due = max(self._due_s, now)
        wait = min(max(0.0, due - burst - now), limit_s)
        self._due_s = min(due + interval, now + limit_s + burst)  # a storm that ended leaves no debt past that
        return wait

    def observe(self, cost_s: float) -> None:
        """A refusal took `cost_s` of the loop (not counting its wait)."""
        self.cost_s += self.SMOOTHING * (max(cost_s, 1e-5) - self.cost_s)
