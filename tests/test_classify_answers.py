from __future__ import annotations

import numpy as np

from torchrest.tasks.classify import softmax, top_k


def test_softmax_rows_sum_to_one_and_survive_large_logits() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]], np.float32)
    probs = softmax(logits)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.isfinite(probs).all()
    assert np.allclose(probs[1], 1 / 3)


def test_top_k_orders_by_confidence_with_labels() -> None:
    probabilities = np.array([0.1, 0.5, 0.05, 0.35], np.float32)
    labels = ["a", "b", "c", "d"]
    assert [p.label for p in top_k(probabilities, 1, 3, labels)] == ["b", "d", "a"]
    assert top_k(probabilities, 1, 1, labels)[0].class_id == 1
    assert len(top_k(probabilities, 1, 10, labels)) == 4


def test_missing_label_names_fall_back_to_the_class_id() -> None:
    assert top_k(np.array([0.2, 0.8], np.float32), 1, 1, ["only"])[0].label == "class_1"
