"""The batching policy, driven by a hand-set clock: no sleeps."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import pytest

from torchrest.admission import Admission, Refusals
from torchrest.engine.batching import BatchQueue, Job
from torchrest.errors import QueueFull


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job(clock: Clock, deadline_in_s: float = 10.0, name: str = "") -> Job:
    return Job(np.zeros((2, 2, 3), np.uint8), clock.now + deadline_in_s, clock.now, name, Future())


def test_lone_job_is_taken_at_once() -> None:
    clock = Clock()
    queue = BatchQueue(8, now=clock)
    queue.put(job(clock, name="a"))
    taken = queue.take()
    assert taken is not None and [j.request_id for j in taken.batch] == ["a"]


def test_free_instance_takes_everything_waiting_up_to_the_limit() -> None:
    clock = Clock()
    queue = BatchQueue(4, now=clock)
    for i in range(10):
        queue.put(job(clock, name=str(i)))
    sizes = []
    while len(queue):
        taken = queue.take()
        assert taken is not None
        sizes.append(len(taken.batch))
    assert sizes == [4, 4, 2]


def test_fifo_order_within_and_across_batches() -> None:
    clock = Clock()
    queue = BatchQueue(3, now=clock)
    for i in range(5):
        queue.put(job(clock, name=str(i)))
    first, second = queue.take(), queue.take()
    assert first and second
    assert [j.request_id for j in first.batch + second.batch] == ["0", "1", "2", "3", "4"]


def test_expired_and_abandoned_jobs_never_reach_the_batch() -> None:
    clock = Clock()
    queue = BatchQueue(8, now=clock)
    late, gone, live = job(clock, 0.5, "late"), job(clock, name="gone"), job(clock, name="live")
    gone.future.cancel()
    for j in (late, gone, live):
        queue.put(j)
    clock.now += 1.0
    taken = queue.take()
    assert taken is not None
    assert [j.request_id for j in taken.batch] == ["live"]
    assert taken.expired == [late] and taken.abandoned == [gone]


def test_max_wait_flushes_when_the_clock_passes_it() -> None:
    clock = Clock()
    queue = BatchQueue(8, max_wait_s=0.05, now=clock)
    queue.put(job(clock, name="a"))
    clock.now += 0.06  # the first job has waited long enough: no real waiting happens
    taken = queue.take()
    assert taken is not None and len(taken.batch) == 1


def test_max_wait_returns_early_when_the_batch_fills() -> None:
    clock = Clock()
    queue = BatchQueue(2, max_wait_s=30.0, now=clock)  # the clock never moves: only a full batch ends the wait
    queue.put(job(clock, name="a"))
    result: list[int] = []
    taker = threading.Thread(target=lambda: result.append(len(queue.take().batch)))  # type: ignore[union-attr]
    taker.start()
    queue.put(job(clock, name="b"))
    taker.join(timeout=10)
    assert not taker.is_alive() and result == [2]


def test_close_wakes_idle_takers() -> None:
    queue = BatchQueue(4)
    results: list[object] = []
    taker = threading.Thread(target=lambda: results.append(queue.take()))
    taker.start()
    queue.close()
    taker.join(timeout=10)
    assert results == [None]


def test_admission_bounds_in_flight() -> None:
    admission = Admission(2)
    admission.admit()
    admission.admit()
    with pytest.raises(QueueFull):
        admission.admit()
    admission.release()
    admission.admit()
    assert admission.in_flight == 2


def test_admission_refuses_what_the_queue_would_keep_past_its_deadline() -> None:
    admission = Admission(100, instances=2)
    admission.admit(deadline_s=0.001, now_s=0.0)  # nothing measured yet: nothing refused for time
    admission.observe(images=4, seconds=0.4)  # 0.1 s per image
    for _ in range(18):
        admission.admit(deadline_s=10.0, now_s=0.0)
    assert admission.expected_wait_s() == pytest.approx(1.0)  # 20 images x 0.1 s / 2 instances
    admission.admit(deadline_s=1.0, now_s=0.0)  # 1.0 s ahead: just in time
    with pytest.raises(QueueFull) as refused:
        admission.admit(deadline_s=1.0, now_s=0.0)  # 1.05 s ahead: it would expire in the queue
    assert refused.value.headers["retry-after"] == "2"  # the wait, rounded up
    assert admission.in_flight == 20
    admission.observe(images=1, seconds=0.0)  # a faster batch moves the estimate a fifth of the way
    assert admission.seconds_per_image == pytest.approx(0.08)


class PeaksAtFour:
    """A stand-in device whose per-image speed peaks at batch 4 (as small CPUs do), timed for real."""

    name = "peaks_at_four"
    device = "cpu"

    def prepare_thread(self) -> None:
        pass

    def input_buffer(self, max_batch_size: int, size: int) -> np.ndarray:
        return np.empty((max_batch_size, size, size, 3), np.uint8)

    def run(self, batch: np.ndarray) -> np.ndarray:
        per_image_s = {1: 0.004, 2: 0.003, 4: 0.002, 8: 0.0025, 16: 0.003}[len(batch)]
        threading.Event().wait(per_image_s * len(batch))
        return (np.zeros((len(batch), 3), np.float32),)


def test_warm_up_caps_batches_at_the_fastest_size() -> None:
    import asyncio

    from torchrest.engine.runtime import ModelRuntime
    from torchrest.metrics import Metrics
    from torchrest.model_input import InputSpec
    from torchrest.models.common import LoadedModel
    from torchrest.preprocess import Preprocessor

    spec = InputSpec(8, 8)
    model = LoadedModel("toy", module=None, labels=["a", "b", "c"], input_spec=spec, pretrained=True, source="t")  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    runtime = ModelRuntime(
        model,
        [PeaksAtFour()],
        Preprocessor(spec, 10**6, 1),
        max_batch_size=16,
        max_wait_s=0,
        max_queue=8,
        metrics=Metrics(),
        loop=loop,
    )
    measured = runtime.warm_up(tune_batch=True)
    loop.close()
    assert sorted(measured) == [1, 2, 4, 8, 16]
    assert runtime.queue.max_batch_size == 4


def test_refusals_are_paced_to_their_budget_after_a_burst() -> None:
    """At 1 ms a refusal and a tenth of a core, refusals go out 10 ms apart once a burst has gone at once;
    each waits at most its Retry-After; a storm that ended leaves no debt; budget 0 never waits."""
    clock = [100.0]
    refusals = Refusals(0.1, now=lambda: clock[0])
    refusals.cost_s = 0.001
    waits = [refusals.delay_s(1.0) for _ in range(Refusals.BURST + 5)]
    assert waits[: Refusals.BURST + 1] == pytest.approx([0.0] * (Refusals.BURST + 1))
    assert waits[Refusals.BURST + 1 :] == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert max(refusals.delay_s(0.5) for _ in range(200)) == 0.5  # never past its Retry-After
    clock[0] += 10  # the storm ended
    assert refusals.delay_s(1.0) == 0.0
    refusals.observe(0.003)  # refusals measured dearer: the pace slows
    assert refusals.cost_s == pytest.approx(0.001 + 0.1 * 0.002)
    unpaced = Refusals(0.0, now=lambda: clock[0])
    assert all(unpaced.delay_s(1.0) == 0.0 for _ in range(1000))
