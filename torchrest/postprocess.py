"""Last stage: a batch of logits -> probabilities and each row's most probable class (in the inference
thread, once per batch), then one row -> the top-k labels a request asked for (on the event loop).

The event loop does no numpy work for the usual top-1 answer: numpy releases the GIL inside its calls,
and taking it back from busy decode threads costs the loop far more than the call itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Answer(NamedTuple):
    """One image's answer from the runtime."""

    probabilities: np.ndarray  # (classes,) float32
    best: int  # the most probable class


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    class_id: int
    confidence: float

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "class_id": self.class_id, "confidence": self.confidence}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) float logits, computed stably in float32."""
    shifted = logits.astype(np.float32, copy=True)
    shifted -= shifted.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def top_k(answer: Answer, k: int, labels: list[str]) -> list[Prediction]:
    """The k most probable classes of one answer, most probable first."""
    probabilities = answer.probabilities
    best = [answer.best] if k == 1 else [int(i) for i in top_indices(probabilities[None], k)[0]]
    return [Prediction(label(labels, i), i, round(float(probabilities[i]), 6)) for i in best]


def top_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """(N, classes) -> (N, k) class ids, most probable first in each row."""
    k = min(k, probabilities.shape[1])
    if k == 1:
        return probabilities.argmax(axis=1)[:, None]
    candidates = np.argpartition(probabilities, -k, axis=1)[:, -k:]
    order = np.argsort(np.take_along_axis(probabilities, candidates, axis=1), axis=1)[:, ::-1]
    return np.take_along_axis(candidates, order, axis=1)


def label(labels: list[str], class_id: int) -> str:
    return labels[class_id] if class_id < len(labels) else f"class_{class_id}"
