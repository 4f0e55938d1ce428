"""The cores the models of one server share: every batch leases the threads it runs on.

Each model is laid out for the whole machine (torchrest.layout), so a model that is busy alone gets
every core. When several are busy at once, giving each its own threads would oversubscribe the cores:
two models of 2 threads on 2 cores make four threads that preempt each other mid-kernel, and both slow
down by more than half. Instead a batch takes its instance's threads from this budget before it runs and
gives them back after, so busy models take turns in the order they asked (first come, first served, so
a model with more threads is not starved by smaller ones), each turn at full speed.

    budget = the server's thread budget (--threads, or the cores the cgroup allows)
    a batch of a model laid out as instances x threads leases `threads` (at most the budget)

benchmark/sharing.py measures two busy models with and without the budget.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator


class CoreBudget:
    def __init__(self, cores: int) -> None:
        self.cores = max(1, cores)
        self._free = self.cores
        self._changed = threading.Condition()
        self._tickets = itertools.count()
        self._serving = 0  # the ticket whose turn it is

    @contextlib.contextmanager
    def lease(self, threads: int) -> Iterator[None]:
        """Hold `threads` cores (capped at the budget) while the block runs; waits for its turn."""
        wanted = min(max(1, threads), self.cores)
        with self._changed:
            ticket = next(self._tickets)
            while ticket != self._serving or self._free < wanted:
                self._changed.wait()
            self._free -= wanted
            self._serving += 1
            self._changed.notify_all()  # the next ticket may fit in what is left
        try:
            yield
        finally:
            with self._changed:
                self._free += wanted
                self._changed.notify_all()

    @property
    def free(self) -> int:
        return self._free
