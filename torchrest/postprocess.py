"""Last stage: a batch of logits -> probabilities (in the inference thread, once per batch), then one
row -> the top-k labels a request asked for (on the event loop, a few microseconds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def top_k(probabilities: np.ndarray, k: int, labels: list[str]) -> list[Prediction]:
    """The k most probable classes of one row, most probable first."""
    k = min(k, probabilities.shape[0])
    if k == 1:
        best = np.array([int(probabilities.argmax())])
    else:
        candidates = np.argpartition(probabilities, -k)[-k:]
        best = candidates[np.argsort(probabilities[candidates])[::-1]]
    return [Prediction(_label(labels, int(i)), int(i), round(float(probabilities[i]), 6)) for i in best]


def _label(labels: list[str], class_id: int) -> str:
    return labels[class_id] if class_id < len(labels) else f"class_{class_id}"
