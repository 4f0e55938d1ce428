"""Serving layouts (torchrest.layout): config.json's, scaled to the thread budget, flags first."""

from __future__ import annotations

import pytest

from torchrest.layout import DEFAULT_MAX_BATCH, Layout, serving_layout, splits
from torchrest.optimize.serving import LATENCY, THROUGHPUT, LayoutResult, choose_layout


def test_splits_use_every_core() -> None:
    assert splits(1) == [(1, 1)]
    assert splits(2) == [(1, 2), (2, 1)]
    assert splits(4) == [(1, 4), (2, 2), (4, 1)]
    assert splits(6) == [(1, 6), (2, 3), (3, 2), (6, 1)]


def test_layout_from_config_json() -> None:
    assert Layout.from_dict({"instances": 2, "threads": 1, "max_batch_size": 8}) == Layout(2, 1, 8)
    assert Layout.from_dict({"instances": 1, "threads": 4}) == Layout(1, 4, 0)
    for broken in ([1, 2], {"instances": 0, "threads": 2}, {"instances": "two", "threads": 2}, {"threads": 2}):
        with pytest.raises(ValueError, match="layout"):
            Layout.from_dict(broken)


def test_served_layout_follows_config_json_scaled_to_the_cores() -> None:
    tuned = Layout(2, 1, 8)  # measured on 2 cores
    assert serving_layout(tuned, 2) == (Layout(2, 1, 8), False)
    assert serving_layout(tuned, 8) == (Layout(8, 1, 8), False)  # same share of instances per core
    assert serving_layout(tuned, 1) == (Layout(1, 1, 8), False)
    assert serving_layout(Layout(1, 2, 4), 16) == (Layout(8, 2, 4), False)  # threads per instance kept
    # flags win; --tune-batch re-times the cap
    assert serving_layout(tuned, 2, instances=1) == (Layout(1, 2, 8), False)
    assert serving_layout(tuned, 2, max_batch_size=3) == (Layout(2, 1, 3), False)
    assert serving_layout(tuned, 2, tune_batch=True) == (Layout(2, 1, 8), True)


def test_model_without_a_layout_gets_one_instance_and_a_timed_cap() -> None:
    assert serving_layout(None, 4) == (Layout(1, 4, DEFAULT_MAX_BATCH), True)
    assert serving_layout(None, 4, instances=2) == (Layout(2, 2, DEFAULT_MAX_BATCH), True)
    assert serving_layout(None, 4, max_batch_size=5) == (Layout(1, 4, 5), False)
    # a model whose backend serves best narrow (ONNX Runtime): one instance per core, at most MAX_NARROW,
    assert serving_layout(None, 2, narrow=True) == (Layout(2, 1, DEFAULT_MAX_BATCH), True)
    assert serving_layout(None, 16, narrow=True) == (Layout(4, 4, DEFAULT_MAX_BATCH), True)
    # ... and a divisor of the cores, so that no core goes unused: 6 cores -> 3 instances of 2 threads
    assert serving_layout(None, 6, narrow=True) == (Layout(3, 2, DEFAULT_MAX_BATCH), True)
    assert serving_layout(None, 7, narrow=True) == (Layout(1, 7, DEFAULT_MAX_BATCH), True)
    assert serving_layout(None, 16, instances=1, narrow=True) == (Layout(1, 16, DEFAULT_MAX_BATCH), True)


def measured(instances: int, threads: int, cap: int, throughput: float, p50_ms: float) -> LayoutResult:
    return LayoutResult("openvino-fp32", instances, threads, cap, throughput, p50_ms)


def test_objectives_choose_from_the_measured_trade() -> None:
    one_stream = [measured(1, 2, 1, 120.0, 8.8), measured(1, 2, 4, 160.0, 8.8), measured(1, 2, 8, 162.0, 8.8)]
    two_streams = [measured(2, 1, 2, 169.0, 12.2), measured(2, 1, 8, 170.0, 12.2)]
    too_slow_alone = [measured(4, 1, 8, 200.0, 30.0)]  # more than 2x the quickest lone request
    tried = one_stream + two_streams + too_slow_alone
    # throughput: the most img/s within the latency slack; within 5% of it, the smaller batch cap
    assert choose_layout(tried, THROUGHPUT) is two_streams[0]
    assert sum(result.chosen for result in tried) == 1
    # latency: the quickest lone request, then the most img/s
    fresh = [measured(r.instances, r.threads, r.max_batch_size, r.throughput, r.p50_ms) for r in tried]
    assert (choose_layout(fresh, LATENCY).instances, choose_layout(fresh, LATENCY).max_batch_size) == (1, 8)
    # the baseline (the reference served plainly) is never chosen, however fast
    baseline = LayoutResult("torch-eager", 1, 2, 4, 999.0, 1.0, baseline=True)
    assert choose_layout([*one_stream, baseline], THROUGHPUT) is one_stream[1]
