"""classify: which class is this image. The model gives one output, (N, classes) logits; the answer is the
class probabilities (softmax, once per batch, on the inference thread) and the most probable class.

    HTTP   POST /classify?top_k=k -> {"status", "model", "prediction", "top_k"} (the seed's contract)
    v2     labels (BYTES [n, k]) and scores (FP32 [n, k]) for the top k (parameter top_k, default 1), and
           probabilities (FP32 [n, classes]) when asked for
    optimize   top-1 agreement with fp32 >= 1 - --max-top1-disagreement (with labelled photos and
           --max-accuracy-drop: top-1 accuracy at most that far below fp32's); the INT8 search ranks layers
           by the KL divergence of the probabilities
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from torchrest.errors import BadRequest, InvalidModelOutput, ModelLoadError
from torchrest.model_input import InputSpec
from torchrest.preprocess import decode_image, reference_pixels
from torchrest.tasks.base import Answer, Decoded, Output, OutputShape, Rows, Schema, Task, label, shown
from torchrest.tasks.fidelity import Bound, BoundValues, Fidelity, Verdict

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


class Classify(Task):
    name = NAME
    summary = "Classify one image"
    resize = "crop"
    outputs: tuple[str, ...] = OUTPUTS
    default_outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    view = "labels"
    page_query = {"top_k": "5"}
    imagenet_labels = True
    labels_required = True

    @property
    def fidelity(self) -> Fidelity:
        return ClassifyGate()

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[ClassifyHead, int]:
        """The head over output `first`: (classes,) per image."""
        shape = outputs[first] if first < len(outputs) else None
        if shape is None or len(shape) != 1 or shape[0] < 1:
            raise ModelLoadError(
                f"task classify expects an output of shape (N, classes); output {first} is {shown(shape)}"
            )
        return ClassifyHead(first, shape[0]), 1

    def openapi(self) -> tuple[list[Schema], Schema]:
        prediction: Schema = {
            "type": "object",
            "required": ["label", "class_id", "confidence"],
            "properties": {
                "label": {"type": "string"},
                "class_id": {"type": "integer", "minimum": 0},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
        }
        top_k: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 1}
        answer: Schema = {
            "type": "object",
            "required": ["prediction", "top_k"],
            "properties": {"prediction": prediction, "top_k": {"type": "array", "items": prediction, "minItems": 1}},
        }
        return [{"name": "top_k", "in": "query", "schema": top_k}], answer

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


@dataclass(frozen=True, slots=True)
class Agreement:
    """A candidate's probabilities against the reference's on the same inputs."""

    samples: int
    top1_agreement: float  # share of inputs whose top-1 class is the reference's
    top5_overlap: float  # mean share of the reference's top-5 classes also in the candidate's top-5
    max_probability_diff: float  # largest |p - p_ref| over every input and class

    @property
    def top1_disagreement(self) -> float:
        return 1.0 - self.top1_agreement

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compare(reference_logits: np.ndarray, logits: np.ndarray) -> Agreement:
    """Both (N, classes); raises ValueError when the shapes differ (a candidate that lost its classes)."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"candidate answers have shape {logits.shape}, the reference {reference_logits.shape}")
    reference_p = softmax(reference_logits.astype(np.float32))
    candidate_p = softmax(logits.astype(np.float32))
    k = min(5, reference_p.shape[1])
    top_reference = np.argsort(-reference_p, axis=1)[:, :k]
    top_candidate = np.argsort(-candidate_p, axis=1)[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_reference, top_candidate, strict=True)]
    return Agreement(
        samples=len(reference_p),
        top1_agreement=float(np.mean(top_reference[:, 0] == top_candidate[:, 0])),
        top5_overlap=float(np.mean(overlap)),
        max_probability_diff=float(np.max(np.abs(reference_p - candidate_p))),
    )


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy over the inputs that have a label (label >= 0); NaN when none has."""
    known = labels >= 0
    if not known.any():
        return float("nan")
    return float(np.mean(logits[known].argmax(axis=1) == labels[known]))


def kl_divergence(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL divergence of the candidate's class probabilities from the reference's."""
    p, q = softmax(reference_logits.astype(np.float32)), softmax(logits.astype(np.float32))
    eps = 1e-9
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))


MAX_PIXELS = 64_000_000


def preprocessing_fidelity(
    run: Callable[[np.ndarray], np.ndarray], files: Sequence[bytes], spec: InputSpec, batch_size: int = 16
) -> Agreement:
    """The model's answers (`run`: (N, S, S, 3) uint8 -> (N, classes) logits) on what the server's
    pre-processing makes of `files`, compared with its answers on `reference_pixels` of the same files."""

    def logits(pixels: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([run(np.stack(pixels[at : at + batch_size])) for at in range(0, len(pixels), batch_size)])

    served = logits([decode_image(data, spec, MAX_PIXELS) for data in files])
    return compare(logits([reference_pixels(data, spec) for data in files]), served)


DISAGREEMENT = Bound(
    "max_top1_disagreement", "1%", "classify: reject a candidate whose top-1 differs from fp32 more often"
)
ACCURACY_DROP = Bound(
    "max_accuracy_drop",
    "",
    "classify, with labelled photos (--calibration holding class-named sub-folders): reject a candidate whose "
    "top-1 accuracy on them is more than this below fp32's (e.g. 0.5%%), instead of judging agreement",
    optional=True,
)


class ClassifyGate(Fidelity):
    """Top-1 agreement with fp32 (or, with labelled photos and --max-accuracy-drop, top-1 accuracy); the
    answers are the raw logits, what the head's answer is made of."""

    measure = "top-1 agreement"
    bounds = (DISAGREEMENT, ACCURACY_DROP)

    def answers(self, task: str, head: Any, outputs: Sequence[np.ndarray], read: range) -> np.ndarray:
        return np.array(outputs[head.output], dtype=np.float32)

    def criterion(self, bounds: BoundValues, labels: Any) -> str:
        return "top-1 accuracy" if _by_accuracy(bounds, labels) else self.measure

    def check(self, bounds: BoundValues, labelled: bool) -> str:
        if bounds.get(ACCURACY_DROP.name) is not None and not labelled:
            return (
                "--max-accuracy-drop needs labelled photos: put them in sub-folders of the --calibration folder "
                "named after their class (a label of the model, or an ImageNet WordNet id such as n02123045)"
            )
        return ""

    def judge(self, task: str, reference: Any, candidate: Any, bounds: BoundValues, labels: Any) -> Verdict:
        agreement = compare(reference, candidate)
        details = agreement.to_dict()
        figures = {
            "top-1 agree": f"{agreement.top1_agreement:.1%}",
            "top-5 overlap": f"{agreement.top5_overlap:.1%}",
            "max Δp": f"{agreement.max_probability_diff:.3f}",
        }
        if labels is not None and (labels >= 0).any():
            details["accuracy"] = accuracy(candidate, labels)
            figures["top-1 accuracy"] = f"{details['accuracy']:.1%}"
        if _by_accuracy(bounds, labels):
            most = bounds[ACCURACY_DROP.name]
            assert most is not None
            value, baseline = accuracy(candidate, labels), accuracy(reference, labels)
            drop = baseline - value
            reason = f"top-1 accuracy {drop:.1%} below fp32's > {most:.1%}" if drop > most + 1e-9 else ""
            gate = f"top-1 accuracy on the labelled inputs at most {most:.1%} below fp32's"
            return Verdict(task, "top-1 accuracy", value, baseline - most, not reason, reason, details, figures, gate)
        most = bounds[DISAGREEMENT.name]
        assert most is not None
        value = agreement.top1_agreement
        reason = f"top-1 disagreement {1 - value:.1%} > {most:.1%}" if 1 - value > most + 1e-9 else ""
        gate = f"top-1 agreement with fp32 at least {1 - most:.1%}"
        return Verdict(task, self.measure, value, 1 - most, not reason, reason, details, figures, gate)

    def harm(self, head: Any, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], read: range) -> float:
        return kl_divergence(reference[head.output], candidate[head.output])

    def notes(self, reference: Any) -> list[str]:
        top1 = np.asarray(reference).argmax(axis=1)
        distinct = len(set(top1.tolist()))
        if distinct < min(10, len(top1) // 10):
            return [
                f"the reference gives only {distinct} distinct top-1 classes over the held-out set, "
                "so top-1 agreement is easy to reach; pass more varied --calibration photos"
            ]
        return []


def _by_accuracy(bounds: BoundValues, labels: Any) -> bool:
    return bounds.get(ACCURACY_DROP.name) is not None and labels is not None
