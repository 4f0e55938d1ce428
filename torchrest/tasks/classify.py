"""classify: which class is this image. The model gives one output, (N, classes) logits; the answer is the
class probabilities (softmax, once per batch, on the inference thread) and the most probable class.

    HTTP   POST /classify?top_k=k -> {"status", "model", "prediction", "top_k"} (the seed's contract)
    v2     labels (BYTES [n, k]) and scores (FP32 [n, k]) for the top k (parameter top_k, default 1), and
           probabilities (FP32 [n, classes]) when asked for
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchrest.errors import BadRequest, InvalidModelOutput, ModelLoadError
from torchrest.tasks.base import Answer, Decoded, Output, OutputShape, Rows, label, shown

NAME = "classify"
MAX_TOP_K = 20  # POST /classify; the Open Inference Protocol allows any k up to the classes
OUTPUTS = ("probabilities", "labels", "scores")
DEFAULT_OUTPUTS = ("labels", "scores")


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


def top_k(probabilities: np.ndarray, best: int, k: int, labels: list[str]) -> list[Prediction]:
    """The k most probable classes of one image's probabilities (`best`: the most probable, known), most
    probable first. The event loop does no numpy work for the usual top-1 answer: numpy releases the GIL
    inside its calls, and taking it back from busy decode threads costs the loop more than the call."""
    chosen = [best] if k == 1 else [int(i) for i in top_indices(probabilities[None], k)[0]]
    return [Prediction(label(labels, i), i, round(float(probabilities[i]), 6)) for i in chosen]


def top_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """(N, classes) -> (N, k) class ids, most probable first in each row."""
    k = min(k, probabilities.shape[1])
    if k == 1:
        return probabilities.argmax(axis=1)[:, None]
    candidates = np.argpartition(probabilities, -k, axis=1)[:, -k:]
    order = np.argsort(np.take_along_axis(probabilities, candidates, axis=1), axis=1)[:, ::-1]
    return np.take_along_axis(candidates, order, axis=1)


@dataclass(frozen=True, slots=True)
class ClassifyHead:
    output: int  # which of the model's outputs it reads
    classes: int
    task = NAME

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[Any]) -> list[Decoded]:
        logits = outputs[self.output][rows]
        probabilities = softmax(logits)
        best = probabilities.argmax(axis=1).tolist()
        decoded: list[Decoded] = [(probabilities[row], best[row]) for row in range(len(probabilities))]
        finite = np.isfinite(probabilities).all(axis=1)
        if not finite.all():
            for row in np.flatnonzero(~finite):
                decoded[row] = InvalidModelOutput("the model's logits for this image hold NaN or infinite values")
        return decoded

    def describe(self) -> dict[str, object]:
        return {"classes": self.classes}


class Classify:
    name = NAME
    route = "/classify"
    outputs: tuple[str, ...] = OUTPUTS
    default_outputs: tuple[str, ...] = DEFAULT_OUTPUTS

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[ClassifyHead, int]:
        """The head over output `first`: (classes,) per image."""
        shape = outputs[first] if first < len(outputs) else None
        if shape is None or len(shape) != 1 or shape[0] < 1:
            raise ModelLoadError(
                f"task classify expects an output of shape (N, classes); output {first} is {shown(shape)}"
            )
        return ClassifyHead(first, shape[0]), 1

    # -- HTTP --------------------------------------------------------------------------------------------
    def http_options(self, query: Mapping[str, str]) -> int:
        """top_k, 1 to MAX_TOP_K."""
        raw = query.get("top_k")
        if raw is None:
            return 1
        if not (raw.strip().isdecimal() and raw.isascii()) or not 1 <= int(raw) <= MAX_TOP_K:
            raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw!r}")
        return int(raw)

    def encodes_off_loop(self, answer: Answer) -> bool:
        return False

    def http_body(
        self, answer: Answer, k: int, head: ClassifyHead, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        predictions = top_k(answer.value, answer.best, k, labels)
        payload = {
            "status": "success",
            "model": model,
            "prediction": predictions[0].as_dict(),
            "top_k": [p.as_dict() for p in predictions],
        }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(), "application/json"

    # -- the Open Inference Protocol -----------------------------------------------------------------------
    def v2_options(self, parameters: Mapping[str, object], head: ClassifyHead) -> int:
        classes = head.classes
        k = parameters.get("top_k", 1)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= classes:
            raise BadRequest(f"top_k must be an integer from 1 to {classes}, got {k!r}")
        return k

    def v2_metadata(self, head: ClassifyHead) -> list[dict[str, Any]]:
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, head.classes]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ]

    def v2_outputs(
        self, answers: list[Answer], k: int, head: ClassifyHead, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        classes = head.classes
        probabilities = np.stack([a.value for a in answers]) if answers else np.zeros((0, classes), np.float32)
        n = probabilities.shape[0]
        top = top_indices(probabilities, k)
        outputs = []
        for name, binary in wanted.items():
            if name == "probabilities":
                outputs.append(Output(name, "FP32", [n, classes], probabilities, binary))
            elif name == "scores":
                outputs.append(Output(name, "FP32", [n, k], np.take_along_axis(probabilities, top, axis=1), binary))
            elif name == "labels":
                names = [label(labels, int(i)).encode() for i in top.reshape(-1)]
                outputs.append(Output(name, "BYTES", [n, k], names, binary))
        return outputs


TASK = Classify()
