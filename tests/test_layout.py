"""Serving layouts (torchrest.layout) and the core budget the models share (torchrest.core_budget)."""

from __future__ import annotations

import threading
import time

import pytest

from torchrest.core_budget import CoreBudget
from torchrest.layout import DEFAULT_MAX_BATCH, Layout, serving_layout, splits


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


def test_core_budget_never_lends_more_cores_than_it_has() -> None:
    budget = CoreBudget(4)
    held, most = [0], [0]
    guard = threading.Lock()

    def batch(threads: int) -> None:
        for _ in range(20):
            with budget.lease(threads):
                with guard:
                    held[0] += min(threads, 4)
                    most[0] = max(most[0], held[0])
                time.sleep(0.001)
                with guard:
                    held[0] -= min(threads, 4)

    workers = [threading.Thread(target=batch, args=(threads,)) for threads in (4, 2, 2, 1, 1, 8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    assert most[0] <= 4 and budget.free == 4


def test_core_budget_serves_in_turn() -> None:
    """A lease of all the cores is not overtaken by smaller ones that ask after it."""
    budget = CoreBudget(2)
    order: list[str] = []
    first = budget.lease(1)
    first.__enter__()  # one core is taken: the 2-core lease must wait

    def take(name: str, threads: int) -> None:
        with budget.lease(threads):
            order.append(name)

    big = threading.Thread(target=take, args=("big", 2))
    big.start()
    time.sleep(0.05)
    small = threading.Thread(target=take, args=("small", 1))
    small.start()
    time.sleep(0.05)
    assert order == []  # the small one fits in the free core, but it is not its turn
    first.__exit__(None, None, None)
    big.join(timeout=10)
    small.join(timeout=10)
    assert order == ["big", "small"]
