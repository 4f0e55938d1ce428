"""A model's runtime: its admission bound, its batch queue, and one inference thread per instance,
each owning a Backend.

    infer(bytes) --Job--> BatchQueue --take()--> instance thread: decode the batch into the batch buffer
    (in parallel), backend.run, softmax --one call_soon_threadsafe per batch--> each future gets its row

Decode and model take turns on the same cores instead of fighting over them, and only the hand-off back
to the event loop crosses threads, once per batch.

A lone batch gets every core: with several instances (the throughput layout: each its share of the
threads), a batch that would run while the others are idle and nothing else waits runs on the model's
whole thread budget instead (`Backend.alone`: torch widens its pool, ONNX Runtime and OpenVINO keep a
whole-budget session or graph), and an instance that takes a batch meanwhile waits for it to finish (one
batch at most) rather than crowd its cores. Under load the batches run side by side, as laid out. So the
quiet hours get the latency of one wide instance and the busy ones the throughput of many narrow ones;
`torchrest_batches_total{cores=...}` shows which served each batch.

Each instance thread is supervised. A batch the model raises on fails alone (500). An error that leaves
the instance unusable (out of memory, a CUDA fault) or anything escaping the serving loop (a bug) ends
the instance: its batch fails, `/health` turns not-ready, and the thread re-opens its backend after a
back-off (1 s, doubling up to 30 s while restarts keep failing) and serves again. Queued requests wait for
it (or for another instance) until their deadline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from torchrest.admission import Admission, Admits
from torchrest.backends import Backend
from torchrest.engine.batching import BatchQueue, Job, Taken
from torchrest.errors import DeadlineExceeded, ModelError, QueueFull, TorchrestError, first_line
from torchrest.messages import RuntimeInfo
from torchrest.metrics import Metrics, ModelStats, RecentActivity
from torchrest.models.common import LoadedModel
from torchrest.postprocess import Answer, softmax
from torchrest.preprocess import Preprocessor
from torchrest.timing import StageTimes, median_call_s
from torchrest.tracing import current as current_tracing

log = logging.getLogger("torchrest.runtime")

BATCH_TOLERANCE = 0.95  # a smaller batch within 5% of the best throughput wins: same speed, less latency
TUNE_SECONDS_PER_SIZE = 0.3  # start-up batch tuning: time spent on each batch size
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


@dataclass(slots=True)
class Instance:
    """One inference thread and the backend it owns; `down` says why it is not serving (None: serving)."""

    index: int
    backend: Backend
    down: str | None = None
    restarts: int = 0
    last_answered_s: float = 0.0  # when its last batch was answered (monotonic clock)
    busy: bool = False  # running a batch (read by the event loop: a hint, not a lock)


class ModelRuntime(Admits):
    def __init__(
        self,
        model: LoadedModel,
        backends: list[Backend],
        preprocessor: Preprocessor,
        *,
        reopen: Callable[[], Backend] | None = None,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        threads: int = 1,
    ) -> None:
        self.model = model
        self.threads = threads  # intra-op threads of each instance
        self.instances = [Instance(index, backend) for index, backend in enumerate(backends)]
        self.reopen = reopen  # opens a fresh backend for an instance that died (None: restart not possible)
        self.preprocessor = preprocessor
        self.queue = BatchQueue(max_batch_size, max_wait_s)
        self.admission = Admission(max_queue, len(backends))
        self.metrics = metrics
        self.stats = ModelStats()
        self.recent = RecentActivity()
        self.loop = loop
        self.budget = threads * len(backends)  # the model's whole thread budget, which a lone batch gets
        self._cores = threading.Condition()
        self._running = 0  # batches in the model now
        self._lent = False  # one of them has every core
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        name = model.name
        self._batch_size = metrics.batch_size.labels(name)
        self._queue_wait = metrics.stage_latency.labels(name, "queue_wait")
        self._inference = metrics.stage_latency.labels(name, "inference")
        self._preprocess = metrics.stage_latency.labels(name, "preprocess")
        self._total = metrics.stage_latency.labels(name, "total")
        self._errors = metrics.model_errors.labels(name)
        self._expired = metrics.dropped.labels(name, "expired")
        self._cancelled = metrics.dropped.labels(name, "cancelled")
        self._shed = metrics.dropped.labels(name, "shed")
        self._restarts = metrics.instance_restarts.labels(name)
        self._on_all_cores = metrics.batches.labels(name, "all_cores")
        self._on_own_threads = metrics.batches.labels(name, "own_threads")
        metrics.queue_depth.labels(name).set_function(lambda: len(self.queue))
        metrics.in_flight.labels(name).set_function(lambda: self.admission.in_flight)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def backends(self) -> list[Backend]:
        return [instance.backend for instance in self.instances]

    def not_ready_reason(self) -> str | None:
        """None when every instance serves; else which are down and why (for /health)."""
        down = [f"instance {i.index} is restarting after {i.down}" for i in self.instances if i.down]
        return "; ".join(down) or None

    def start(self) -> None:
        for instance in self.instances:
            thread = threading.Thread(
                target=self._supervise, args=(instance,), name=f"infer-{self.name}-{instance.index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout_s)
        self.preprocessor.close()

    def admit(self, count: int = 1, deadline_s: float | None = None) -> None:
        """Take `count` places in this model's bound, or raise QueueFull (503) before any work is done: when
        the bound is full, or when the queue's expected wait would keep them past `deadline_s`."""
        try:
            self.admission.admit(count, deadline_s)
        except QueueFull:
            self._shed.inc(count)
            # Shedding means the model is behind: let its threads have the GIL now rather than after the
            # switch interval, or a storm of 503s on the event loop starves the very model it protects
            # (benchmark/overload.py, 1000 connections: goodput 14-39% of capacity without this, 83-84%
            # with it; the loop then answers 503s at about half the rate, so each waits longer).
            time.sleep(0)
            raise

    def release(self, count: int = 1) -> None:
        self.admission.release(count)

    def observe_total(self, seconds: float) -> None:
        self._total.observe(seconds)
        self.recent.latencies_s.append(seconds)

    async def infer(
        self, image: bytes | np.ndarray, deadline_s: float, request_id: str, times: StageTimes | None = None
    ) -> Answer:
        """Queue one image (encoded, or pixels); return its answer: class probabilities and the most probable
        class (or raise its error).
        `times`, when given, learns where the time went (queue, decode, model)."""
        return await self.submit(image, deadline_s, request_id, times)

    def submit(
        self, image: bytes | np.ndarray, deadline_s: float, request_id: str, times: StageTimes | None = None
    ) -> asyncio.Future[Answer]:
        """As `infer`, without a coroutine: the future of the answer (the engine process answers each
        front-end's request from the future's callback). Cancelling it drops the job before the model."""
        future: asyncio.Future[Answer] = self.loop.create_future()
        enqueued = time.monotonic()
        if times is not None:
            times.model, times.version = self.name, self.model.version
        pending: bytes | np.ndarray | Future[np.ndarray] = image
        if self.preprocessor.ahead and isinstance(image, bytes) and not self._idle():
            pending = self.preprocessor.start(image)  # decode now, while the instances are busy
        self.queue.put(Job(pending, deadline_s, enqueued, request_id, future, times))
        future.add_done_callback(lambda done: self._record(done, enqueued))
        return future

    def _record(self, future: asyncio.Future[Answer], enqueued_s: float) -> None:
        if not future.cancelled():
            self.stats.record_request(future.exception() is None, int((time.monotonic() - enqueued_s) * 1e9))

    @property
    def info(self) -> RuntimeInfo:
        backend = self.instances[0].backend
        return RuntimeInfo(backend.name, backend.device, self.queue.max_batch_size, len(self.instances), self.threads)

    def activity(self) -> dict[str, object]:
        """This model's recent figures, for the web page (GET /web/stats)."""
        ok, failed = self.stats.request_counts()
        return {
            "ok": ok,
            "failed": failed,
            "latency_ms": self.recent.latency_percentiles_ms(),
            "batch_size": self.recent.mean_batch_size(),
            "queue_depth": len(self.queue),
            "in_flight": self.admission.in_flight,
        }

    def _idle(self) -> bool:
        """Nothing queued and an instance free: this image will be taken at once, and decoding it on that
        instance's thread saves a hand-off to the decode pool and back (latency at low load)."""
        return not len(self.queue) and any(not instance.busy and instance.down is None for instance in self.instances)

    def warm_up(self, tune_batch: bool) -> dict[int, float]:
        """Run every backend at each batch size so the first requests pay no kernel set-up; with
        `tune_batch`, cap batches at the smallest size within 5% of the best measured throughput
        (on a small CPU a model can run slower per image at batch 32 than at 4), timed as optimize times
        them. Returns img/s by size (empty without `tune_batch`)."""
        limit = self.queue.max_batch_size
        sizes = sorted({1, limit} | ({2**i for i in range(1, 10) if 2**i < limit} if tune_batch else set()))
        side = self.model.input_spec.crop_size
        throughput: dict[int, float] = {}
        for index, backend in enumerate(self.backends):
            backend.prepare_thread()
            for size in sizes:
                batch = np.zeros((size, side, side, 3), np.uint8)
                backend.run(batch)
                if index == 0 and tune_batch:
                    throughput[size] = size / median_call_s(backend.run, batch, TUNE_SECONDS_PER_SIZE)
        if throughput:
            best = max(throughput.values())
            self.queue.max_batch_size = min(s for s, rate in throughput.items() if rate >= BATCH_TOLERANCE * best)
            log.info(
                "model %s batch sizes (img/s): %s -> batches capped at %d",
                self.name,
                ", ".join(f"{s}: {rate:.1f}" for s, rate in throughput.items()),
                self.queue.max_batch_size,
            )
        return throughput

    def _supervise(self, instance: Instance) -> None:
        """The instance thread: serve until the queue closes; if the instance dies, re-open and go on."""
        backoff_s = RESTART_BACKOFF_S[0]
        while True:
            try:
                self._serve(instance)
                return  # the queue was closed: shutting down
            except BaseException as exc:  # noqa: BLE001 - whatever ended the loop, the thread lives on
                if instance.down is None:  # it died outside a batch (setting up its thread)
                    instance.down = f"{type(exc).__name__}: {first_line(exc)}"
                    log.error("model %s instance %d died: %s", self.name, instance.index, instance.down)
                if self._stopping.is_set() or self.reopen is None:
                    log.error("model %s instance %d stopped: %s", self.name, instance.index, instance.down)
                    return
            while not self._stopping.wait(backoff_s):
                try:
                    backend = self.reopen()
                    backend.prepare_thread()
                    side = self.model.input_spec.crop_size
                    backend.run(np.zeros((1, side, side, 3), np.uint8))
                except Exception as exc:  # noqa: BLE001 - a failed restart is retried, longer apart
                    backoff_s = min(2 * backoff_s, RESTART_BACKOFF_S[1])
                    log.error(
                        "model %s instance %d failed to restart (next try in %.0f s): %s",
                        self.name,
                        instance.index,
                        backoff_s,
                        first_line(exc),
                    )
                    continue
                instance.backend = backend
                instance.restarts += 1
                instance.down = None
                self._restarts.inc()
                log.warning("model %s instance %d restarted", self.name, instance.index)
                break

    def _serve(self, instance: Instance) -> None:
        backend = instance.backend
        backend.prepare_thread()
        side = self.model.input_spec.crop_size
        buffer = backend.input_buffer(self.queue.max_batch_size, side)
        alone = backend.alone(self.budget) if len(self.instances) > 1 else None
        if alone is not None:
            alone(np.zeros((1, side, side, 3), np.uint8))  # its first run sets up kernels: not a request's
        while (taken := self.queue.take()) is not None:
            instance.busy = True
            try:
                self._drop_dead(taken)
                if taken.batch:
                    self._run_batch(instance, backend, buffer, taken.batch, alone)
            except BaseException as exc:
                # down first, so that /health is not-ready before any client hears of the failure
                cause = exc.__cause__ if isinstance(exc, InstanceDied) and exc.__cause__ else exc
                instance.down = f"{type(cause).__name__}: {first_line(cause)}"
                log.error("model %s instance %d died: %s", self.name, instance.index, instance.down)
                error = ModelError(f"model {self.name} failed on this batch ({type(cause).__name__}); restarting it")
                self.loop.call_soon_threadsafe(_fail, taken.batch, error)
                raise
            finally:
                instance.busy = False

    def _run_batch(
        self,
        instance: Instance,
        backend: Backend,
        buffer: np.ndarray,
        batch: list[Job],
        alone: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        started = time.monotonic()
        for job in batch:
            self._queue_wait.observe(started - job.enqueued_s)
        batch = self._decode(batch, buffer)
        decoded = time.monotonic()
        size = len(batch)
        if not size:
            return
        lent = self._claim_cores() if alone is not None else False  # without a wider path, nothing to share
        try:
            logits = alone(buffer[:size]) if lent and alone is not None else backend.run(buffer[:size])
            ran = time.monotonic()
            probabilities = softmax(logits)
            best = probabilities.argmax(axis=1).tolist()
        except Exception as exc:  # noqa: BLE001 - any failure of the model fails this batch only
            self._errors.inc()
            self._trace_batch(batch, decoded, time.monotonic(), type(exc).__name__)
            ids = ", ".join(job.request_id for job in batch)
            log.error("model %s failed on a batch of %d [%s]: %s: %s", self.name, size, ids, type(exc).__name__, exc)
            if is_fatal(exc):
                raise InstanceDied(first_line(exc)) from exc
            error = ModelError(f"model {self.name} failed on this batch: {type(exc).__name__}")
            self.loop.call_soon_threadsafe(_fail, batch, error)
            return
        finally:
            if alone is not None:
                self._release_cores(lent)
        (self._on_all_cores if lent or len(self.instances) == 1 else self._on_own_threads).inc()
        finished = time.monotonic()
        # the time this batch held the instance, from when it could start: the previous answer (busy) or
        # its first job's arrival (idle). Under load that counts what a batch's own timing misses: the
        # instance waiting for the CPU and the GIL between batches.
        since = max(instance.last_answered_s, min(job.enqueued_s for job in batch))
        instance.last_answered_s = finished
        self.admission.observe(size, finished - since)
        self._inference.observe(ran - decoded)
        self._batch_size.observe(size)
        self.recent.batch_sizes.append(size)
        for job in batch:
            if job.times is not None:
                job.times.note(job.enqueued_s, started, decoded, ran)
        self._trace_batch(batch, decoded, ran)
        self.stats.record_batch(
            size,
            queue_ns=int(sum(started - job.enqueued_s for job in batch) * 1e9),
            input_ns=int((decoded - started) * 1e9),
            infer_ns=int((ran - decoded) * 1e9),
            output_ns=int((finished - ran) * 1e9),
        )
        self.loop.call_soon_threadsafe(_settle, batch, probabilities, best)

    def _trace_batch(self, batch: list[Job], start_s: float, end_s: float, error: str = "") -> None:
        """With tracing on: the batch's span, linked to the spans of the requests it served."""
        if (tracing := current_tracing()) is not None:
            links = [job.times.link for job in batch if job.times is not None and job.times.link is not None]
            if links:
                tracing.batch(self.name, self.model.version, len(batch), links, start_s, end_s, error)

    def _claim_cores(self) -> bool:
        """Before a batch enters the model: wait while a lone batch has every core; then take every core
        when this batch is alone (no other in the model, none queued). True when it has them."""
        with self._cores:
            while self._lent:
                self._cores.wait()
            self._lent = self._running == 0 and not len(self.queue)
            self._running += 1
            return self._lent

    def _release_cores(self, lent: bool) -> None:
        with self._cores:
            self._running -= 1
            if lent:
                self._lent = False
                self._cores.notify_all()

    def _decode(self, batch: list[Job], buffer: np.ndarray) -> list[Job]:
        """Fill buffer rows 0..k-1 with the batch's decodable images; fail the others (4xx)."""
        started = time.monotonic()
        errors = self.preprocessor.fill([job.image for job in batch], buffer)
        per_image_s = (time.monotonic() - started) / len(batch)
        for _ in batch:
            self._preprocess.observe(per_image_s)
        if not any(errors):
            return batch
        live_rows = [row for row, error in enumerate(errors) if error is None]
        buffer[: len(live_rows)] = buffer[live_rows]
        for job, error in zip(batch, errors, strict=True):
            if error is not None:
                self.loop.call_soon_threadsafe(_fail, [job], error)
        return [batch[row] for row in live_rows]

    def _drop_dead(self, taken: Taken) -> None:
        for job in (*taken.expired, *taken.abandoned):
            if isinstance(job.image, Future):
                job.image.cancel()  # not decoded yet: never will be
        if taken.expired:
            self._expired.inc(len(taken.expired))
            error = DeadlineExceeded("request waited past its deadline before reaching the model")
            self.loop.call_soon_threadsafe(_fail, taken.expired, error)
        if taken.abandoned:
            self._cancelled.inc(len(taken.abandoned))


def is_fatal(exc: BaseException) -> bool:
    """An error that leaves the backend unusable (memory exhausted, device fault), judged by its text:
    the libraries raise RuntimeError for these as for any other failure."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(marker in text for marker in FATAL_ERRORS)


def _settle(batch: list[Job], probabilities: np.ndarray, best: list[int]) -> None:
    for row, job in enumerate(batch):
        if not job.future.done():
            job.future.set_result(Answer(probabilities[row], best[row]))


def _fail(jobs: list[Job], error: TorchrestError) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
