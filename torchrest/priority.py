"""Who gets the cores under overload: the model's threads first, the event loop with what is left.

    main thread (event loop: HTTP, admission, 503s)  nice + --event-loop-nice (default 10)
    load thread -> inference threads, decode threads  nice 0 (the process's own)

A 503 costs the event loop a fraction of a millisecond, and a thousand clients that retry at once can
ask for thousands per second: at equal priority that takes the cores the model needs, and goodput
falls well below capacity while admitted requests expire. Linux gives each thread its own nice value,
and a thread starts with its creator's. So every long-lived worker thread is started from a thread
that keeps the process's priority (the model manager's load thread, which starts the inference
threads and the decode pool, whose threads are all started up front), and only then is the event
loop's own thread lowered. Raising a nice value needs no privilege; lowering it back would.

Priority is half of it: an eager PyTorch model releases the GIL inside each op and takes it back after,
hundreds of times per forward, and a thread that wants the GIL back from a busy event loop waits up
to the interpreter's switch interval (5 ms by default) each time. At 0.5 ms the model's thread gets it
back ten times sooner. What each step measured: docs/benchmarks.md (benchmark/overload.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("torchrest.priority")

GIL_SWITCH_INTERVAL_S = 0.0005


def hand_off_gil_quickly() -> None:
    """A thread waiting for the GIL gets it within 0.5 ms instead of 5 (the whole process)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def lower_this_thread(nice: int) -> None:
    """Add `nice` to the calling thread's nice value (Linux: per thread; elsewhere the whole process,
    so nothing is done)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError as exc:  # a sandbox that forbids it: serve at equal priority
        log.warning("cannot lower the event loop's priority: %s", exc)


def started_pool(threads: int, name: str, initializer: Callable[[], None] | None = None) -> ThreadPoolExecutor:
    """A thread pool whose threads all exist now, with the calling thread's priority (a pool starts
    threads lazily, from whichever thread submits: the event loop, at its lower priority). Each thread
    runs `initializer` first."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=initializer)
    barrier = threading.Barrier(threads + 1)
    for _ in range(threads):
        pool.submit(barrier.wait)
    barrier.wait()
    return pool
