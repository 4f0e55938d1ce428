"""The served-layout search: how the chosen backend (and the runner-up) should be laid out on this
machine's cores, measured on the path the server runs, not guessed.

For each split of the cores into instances x threads (torchrest.layout.splits) and each batch cap, the
real ModelRuntime (admission, batch queue, decode pool, instance threads) answers the user's own photos,
sent as files, for a fixed time:

    throughput  with enough requests in flight to fill every instance's batches (2 x instances x cap)
    latency     p50 with one request in flight (a lone user's wait), once per split: in a layout of many
                instances the lone request is lent every core, as the server does

Only HTTP is left out: what that costs is measured by benchmark/bench.py against these figures.
The layout chosen is the fastest (`--objective throughput`) among those whose one-request p50 is at most
LATENCY_SLACK x the best one-request p50, or the quickest for a lone request (`--objective latency`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from torchrest.backends import Backend
from torchrest.engine.runtime import ModelRuntime
from torchrest.layout import Layout, splits
from torchrest.metrics import Metrics
from torchrest.model_input import InputSpec
from torchrest.models.common import LoadedModel
from torchrest.preprocess import Preprocessor
from torchrest.tasks import Task
from torchrest.tasks.registry import tasks_named

THROUGHPUT, LATENCY = "throughput", "latency"
OBJECTIVES = (THROUGHPUT, LATENCY)
LATENCY_SLACK = 2.0  # --objective throughput: a layout may at most double a lone request's p50
WARM_UP_S = 0.3
MAX_PIXELS = 64_000_000


@dataclass
class LayoutResult:
    candidate: str
    instances: int
    threads: int
    max_batch_size: int
    throughput: float  # img/s, answered, with the batches kept full
    p50_ms: float  # one request in flight
    chosen: bool = False
    baseline: bool = False  # the fp32 reference as serve runs a model without a layout: never chosen

    @property
    def layout(self) -> Layout:
        return Layout(self.instances, self.threads, self.max_batch_size)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def measure_layouts(
    candidate: str,
    open_backend: Callable[[int, int], Backend],  # (threads, instances) -> one instance's backend
    tasks: tuple[Task, ...],
    spec: InputSpec,
    files: list[bytes],
    cores: int,
    caps: list[int],
    seconds: float,
    progress: Callable[[str], None] = lambda text: None,
    baseline: bool = False,
) -> list[LayoutResult]:
    """Every split of `cores` at every batch cap in `caps`, for one candidate; with `baseline`, only one
    instance with every thread (how serve runs a model without a layout)."""
    results = []
    for instances, threads in splits(cores)[:1] if baseline else splits(cores):
        backends = [open_backend(threads, instances) for _ in range(instances)]
        p50_ms = 0.0
        for cap in sorted(caps):
            progress(f"{instances} x {threads} threads, batches of {cap}")
            lone = p50_ms == 0.0
            rate, latency = asyncio.run(_drive(backends, spec, files, cores, cap, seconds, lone, threads, tasks))
            p50_ms = p50_ms or latency
            results.append(LayoutResult(candidate, instances, threads, cap, rate, p50_ms, baseline=baseline))
        del backends
    return results


def in_process_throughput(
    backends: list[Backend],
    spec: InputSpec,
    files: list[bytes],
    cores: int,
    cap: int,
    seconds: float,
    tasks: tuple[Task, ...] = (),
) -> float:
    """Img/s of the real runtime over `backends` (one per instance) with full batches of up to `cap`, asking
    the first of `tasks` (default: the default task): what a server laid out so could answer without HTTP
    (benchmark/core.py compares it with wrk)."""
    tasks = tasks or tasks_named("")
    rate, _ = asyncio.run(_drive(backends, spec, files, cores, cap, seconds, False, cores // len(backends), tasks))
    return rate


def choose_layout(results: list[LayoutResult], objective: str) -> LayoutResult:
    """Marks and returns the layout `objective` prefers (see the module's docstring)."""
    results = [result for result in results if not result.baseline]
    quickest = min(result.p50_ms for result in results)
    if objective == LATENCY:
        near = [r for r in results if r.p50_ms <= 1.05 * quickest]
        best = max(near, key=lambda r: (r.throughput, -r.max_batch_size))
    else:
        allowed = [r for r in results if r.p50_ms <= LATENCY_SLACK * quickest]
        top = max(r.throughput for r in allowed)
        # within 5% of the best throughput, the smaller batch cap (same speed, shorter waits)
        best = min((r for r in allowed if r.throughput >= 0.95 * top), key=lambda r: (r.max_batch_size, r.instances))
    best.chosen = True
    return best


async def _drive(
    backends: list[Backend],
    spec: InputSpec,
    files: list[bytes],
    cores: int,
    cap: int,
    seconds: float,
    lone: bool,
    threads: int,
    tasks: tuple[Task, ...],
) -> tuple[float, float]:
    """(img/s with the queue kept full, p50 ms with one request in flight (0 unless `lone`)). A lone
    request runs on every core even in a layout of many instances, as in the server (engine.runtime)."""
    model = LoadedModel("layout-search", None, [], spec, True, "optimize", for_tasks=tasks)
    runtime = ModelRuntime(
        model,
        backends,
        Preprocessor(spec, MAX_PIXELS, cores, ahead=True),
        max_batch_size=cap,
        max_wait_s=0.0,
        max_queue=1 << 16,
        metrics=Metrics(),
        loop=asyncio.get_running_loop(),
        threads=threads,
    )
    runtime.warm_up(False)
    runtime.start()
    try:
        p50_ms = 0.0
        if lone:
            latencies = await _load(runtime, files, 1, seconds / 2)
            p50_ms = float(np.median(latencies)) * 1000
        await _load(runtime, files, 2 * len(backends) * cap, WARM_UP_S)
        started = time.perf_counter()
        answered = len(await _load(runtime, files, 2 * len(backends) * cap, seconds))
        return answered / (time.perf_counter() - started), p50_ms
    finally:
        runtime.stop()


async def _load(runtime: ModelRuntime, files: list[bytes], in_flight: int, seconds: float) -> list[float]:
    """`in_flight` clients, each sending the next file as soon as its last is answered (asking the model's own
    task, with its default options), for `seconds`; returns every answer's latency."""
    ends = time.perf_counter() + seconds
    sequence = itertools.cycle(files)
    latencies: list[float] = []
    options = runtime.model.for_tasks[0].http_options({})

    async def client(index: int) -> None:
        while (sent := time.perf_counter()) < ends:
            await runtime.infer(next(sequence), time.monotonic() + 60, f"layout-{index}", options=options)
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client(index) for index in range(in_flight)))
    return latencies
