"""A model's runtime: its admission bound, its batch queue, and its instances (torchrest.engine.instances),
each an inference thread owning a Backend.

    submit(image, task) --Job--> BatchQueue --take()--> instance thread: decode the batch into the batch
    buffer, backend.run, each image's task reads the outputs (torchrest.tasks: softmax, NMS, argmax)
    --one call_soon_threadsafe per batch--> each future gets its answer

Decode and model take turns on the same cores instead of fighting over them, and only the hand-off back
to the event loop crosses threads, once per batch. A lone batch may borrow every core (CoreLending);
`torchrest_batches_total{cores=...}` shows which served each batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from torchrest.admission import Admission
from torchrest.backends import Backend, Outputs
from torchrest.engine.batching import BatchQueue, Job, Taken
from torchrest.engine.instances import CoreLending, Instance, InstanceDied, Instances, is_fatal
from torchrest.engine.stats import ModelStats, RecentActivity, RuntimeMetrics, watch_queue
from torchrest.errors import DeadlineExceeded, ModelError, QueueFull, TaskNotServed, TorchrestError, first_line
from torchrest.metrics import Metrics
from torchrest.models.common import LoadedModel
from torchrest.preprocess import Preprocessor
from torchrest.served import RuntimeInfo
from torchrest.tasks.registry import Answer, Decoded, Geometry, Heads, output_shapes
from torchrest.timing import StageTimes, median_call_s
from torchrest.tracing import current as current_tracing

log = logging.getLogger("torchrest.runtime")

BATCH_TOLERANCE = 0.95  # a smaller batch within 5% of the best throughput wins: same speed, less latency
TUNE_SECONDS_PER_SIZE = 0.3  # start-up batch tuning: time spent on each batch size


class ModelRuntime:
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
        self.preprocessor = preprocessor
        self.queue = BatchQueue(max_batch_size, max_wait_s)
        self.admission = Admission(max_queue, len(backends))
        self.stats = ModelStats()
        self.recent = RecentActivity()
        self.loop = loop
        self.budget = threads * len(backends)  # the model's whole thread budget, which a lone batch gets
        self.figures = RuntimeMetrics.bound(metrics, model.name, model.tasks)
        self.instances = Instances(model.name, backends, reopen, self._run_once, self.figures.restarts)
        self.lending = CoreLending(lambda: len(self.queue))
        watch_queue(metrics, model.name, lambda: len(self.queue), lambda: self.admission.in_flight)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def backends(self) -> list[Backend]:
        return self.instances.backends

    def not_ready_reason(self) -> str | None:
        """None when every instance serves; else which are down and why (for /health)."""
        return self.instances.not_ready_reason()

    def start(self) -> None:
        self.instances.start(self._serve)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.instances.stopping.set()
        self.queue.close()
        self.instances.join(timeout_s)
        self.preprocessor.close()

    def admit(self, count: int = 1, deadline_s: float | None = None) -> None:
        """Take `count` places in this model's bound, or raise QueueFull (503) before any work is done: when
        the bound is full, or when the queue's expected wait would keep them past `deadline_s`."""
        try:
            self.admission.admit(count, deadline_s)
        except QueueFull:
            self.figures.shed.inc(count)
            # the model is behind: its threads get the GIL now rather than after the switch interval, so
            # that answering 503s does not starve the model they protect (docs/benchmarks.md, overload)
            time.sleep(0)
            raise

    def release(self, count: int = 1) -> None:
        self.admission.release(count)

    def observe_total(self, seconds: float) -> None:
        self.figures.total.observe(seconds)
        self.recent.latencies_s.append(seconds)

    async def infer(
        self,
        image: bytes | np.ndarray,
        deadline_s: float,
        request_id: str,
        times: StageTimes | None = None,
        task: str = "",
        options: object = None,
    ) -> Answer:
        """Queue one image (encoded, or pixels) for `task` (default: the model's own) with its options;
        return its answer (or raise its error). `times`, when given, learns where the time went (queue,
        decode, model)."""
        return await self.submit(image, deadline_s, request_id, times, task, options)

    def submit(
        self,
        image: bytes | np.ndarray,
        deadline_s: float,
        request_id: str,
        times: StageTimes | None = None,
        task: str = "",
        options: object = None,
    ) -> asyncio.Future[Answer]:
        """As `infer`, without a coroutine: the future of the answer (the engine process answers each
        front-end's request from the future's callback). Cancelling it drops the job before the model."""
        if task and task not in self.model.tasks:  # the handlers check first; this guards the engine's link too
            raise TaskNotServed(f"model {self.name} does not {task}: it does {' and '.join(self.model.tasks)}")
        future: asyncio.Future[Answer] = self.loop.create_future()
        enqueued = time.monotonic()
        if times is not None:
            times.model, times.version = self.name, self.model.version
        pending: bytes | np.ndarray | Future[tuple[np.ndarray, Geometry]] = image
        if self.preprocessor.ahead and isinstance(image, bytes) and not self._idle():
            pending = self.preprocessor.start(image)  # decode now, while the instances are busy
        job = Job(pending, deadline_s, enqueued, request_id, future, times, task or self.model.tasks[0], options)
        self.queue.put(job)
        future.add_done_callback(lambda done: self._record(done, enqueued))
        return future

    def _record(self, future: asyncio.Future[Answer], enqueued_s: float) -> None:
        if not future.cancelled():
            self.stats.record_request(future.exception() is None, int((time.monotonic() - enqueued_s) * 1e9))

    @property
    def info(self) -> RuntimeInfo:
        backend = self.instances.all[0].backend
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
        return not len(self.queue) and self.instances.one_is_free()

    def warm_up(self, tune_batch: bool) -> dict[int, float]:
        """Run every backend at each batch size so the first requests pay no kernel set-up; with
        `tune_batch`, cap batches at the smallest size within 5% of the best measured throughput
        (on a small CPU a model can run slower per image at batch 32 than at 4), timed as optimize times
        them. Returns img/s by size (empty without `tune_batch`)."""
        limit = self.queue.max_batch_size
        sizes = sorted({1, limit} | ({2**i for i in range(1, 10) if 2**i < limit} if tune_batch else set()))
        throughput: dict[int, float] = {}
        for index, backend in enumerate(self.backends):
            backend.prepare_thread()
            for size in sizes:
                batch = np.zeros((size, *self.model.input_spec.size, 3), np.uint8)
                outputs = backend.run(batch)
                if index == 0 and size == 1:  # what it gives is read by its tasks, as they say (or it fails)
                    model = self.model
                    model.heads = Heads.bind(model.for_tasks, output_shapes(outputs), model.input_spec.size)
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

    @property
    def heads(self) -> Heads:
        assert self.model.heads is not None, "a runtime binds its model's heads when it warms up"
        return self.model.heads

    def _run_once(self, backend: Backend) -> None:
        """A re-opened backend runs one image before it serves."""
        backend.run(np.zeros((1, *self.model.input_spec.size, 3), np.uint8))

    def _serve(self, instance: Instance) -> None:
        """An instance's thread: take batches until the queue closes."""
        backend = instance.backend
        backend.prepare_thread()
        size = self.model.input_spec.size
        buffer = backend.input_buffer(self.queue.max_batch_size, size)
        alone = backend.alone(self.budget) if len(self.instances) > 1 else None
        if alone is not None:
            alone(np.zeros((1, *size, 3), np.uint8))  # its first run sets up kernels: not a request's
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
        alone: Callable[[np.ndarray], Outputs] | None = None,
    ) -> None:
        figures = self.figures
        started = time.monotonic()
        for job in batch:
            figures.queue_wait.observe(started - job.enqueued_s)
        batch = self._decode(batch, buffer)
        decoded = time.monotonic()
        size = len(batch)
        if not size:
            return
        lent = self.lending.claim() if alone is not None else False  # without a wider path, nothing to share
        try:
            outputs = alone(buffer[:size]) if lent and alone is not None else backend.run(buffer[:size])
            ran = time.monotonic()
            answers = self.heads.decode(outputs, [job.task for job in batch], [job.options for job in batch])
        except Exception as exc:  # noqa: BLE001 - any failure of the model fails this batch only
            figures.errors.inc()
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
                self.lending.release(lent)
        (figures.on_all_cores if lent or len(self.instances) == 1 else figures.on_own_threads).inc()
        self._log_unusable(batch, answers)
        finished = time.monotonic()
        # the time this batch held the instance, from when it could start: the previous answer (busy) or
        # its first job's arrival (idle). Under load that counts what a batch's own timing misses: the
        # instance waiting for the CPU and the GIL between batches.
        since = max(instance.last_answered_s, min(job.enqueued_s for job in batch))
        instance.last_answered_s = finished
        self.admission.observe(size, finished - since)
        figures.inference.observe(ran - decoded)
        figures.batch_size.observe(size)
        for task, count in Counter(job.task for job in batch).items():
            figures.answers[task].inc(count)
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
        self.loop.call_soon_threadsafe(_settle, batch, answers)

    def _log_unusable(self, batch: list[Job], answers: list[Decoded]) -> None:
        """One line per batch for the images whose outputs could not be answered (NaN, a failed head)."""
        failed = [(job, answer) for job, answer in zip(batch, answers, strict=True) if isinstance(answer, Exception)]
        if failed:
            ids = ", ".join(job.request_id for job, _ in failed)
            count, first = len(failed), failed[0][1]
            log.error("model %s: %d of %d answers unusable [%s]: %s", self.name, count, len(batch), ids, first)

    def _trace_batch(self, batch: list[Job], start_s: float, end_s: float, error: str = "") -> None:
        """With tracing on: the batch's span, linked to the spans of the requests it served."""
        if (tracing := current_tracing()) is not None:
            links = [job.times.link for job in batch if job.times is not None and job.times.link is not None]
            if links:
                tracing.batch(self.name, self.model.version, len(batch), links, start_s, end_s, error)

    def _decode(self, batch: list[Job], buffer: np.ndarray) -> list[Job]:
        """Fill buffer rows 0..k-1 with the batch's decodable images; fail the others (4xx)."""
        started = time.monotonic()
        fitted = self.preprocessor.fill([job.image for job in batch], buffer)
        per_image_s = (time.monotonic() - started) / len(batch)
        for _ in batch:
            self.figures.preprocess.observe(per_image_s)
        live_rows = []
        for row, (job, outcome) in enumerate(zip(batch, fitted, strict=True)):
            if isinstance(outcome, TorchrestError):
                self.loop.call_soon_threadsafe(_fail, [job], outcome)
            else:
                job.geometry = outcome
                live_rows.append(row)
        if len(live_rows) < len(batch):
            buffer[: len(live_rows)] = buffer[live_rows]
        return [batch[row] for row in live_rows]

    def _drop_dead(self, taken: Taken) -> None:
        for job in (*taken.expired, *taken.abandoned):
            if isinstance(job.image, Future):
                job.image.cancel()  # not decoded yet: never will be
        if taken.expired:
            self.figures.expired.inc(len(taken.expired))
            error = DeadlineExceeded("request waited past its deadline before reaching the model")
            self.loop.call_soon_threadsafe(_fail, taken.expired, error)
        if taken.abandoned:
            self.figures.cancelled.inc(len(taken.abandoned))


def _settle(batch: list[Job], answers: list[Decoded]) -> None:
    for job, answer in zip(batch, answers, strict=True):
        if job.future.done():
            continue
        if isinstance(answer, TorchrestError):
            job.future.set_exception(answer)
        else:
            job.future.set_result(Answer(answer[0], answer[1], job.geometry))


def _fail(jobs: list[Job], error: TorchrestError) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
