"""Fidelity: how far a candidate's answers are from the fp32 reference on the same held-out inputs, and
how far the server's pre-processing moves the model's answers from the textbook pre-processing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from torchrest.model_input import InputSpec
from torchrest.preprocess import decode_image, reference_pixels
from torchrest.tasks.classify import softmax

MAX_PIXELS = 64_000_000


@dataclass(frozen=True, slots=True)
class Fidelity:
    samples: int
    top1_agreement: float  # share of inputs whose top-1 class is the reference's
    top5_overlap: float  # mean share of the reference's top-5 classes also in the candidate's top-5
    max_probability_diff: float  # largest |p - p_ref| over every input and class

    @property
    def top1_disagreement(self) -> float:
        return 1.0 - self.top1_agreement

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compare(reference_logits: np.ndarray, logits: np.ndarray) -> Fidelity:
    """Both (N, classes); raises ValueError when the shapes differ (a candidate that lost its classes)."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"candidate answers have shape {logits.shape}, the reference {reference_logits.shape}")
    reference_p = softmax(reference_logits.astype(np.float32))
    candidate_p = softmax(logits.astype(np.float32))
    k = min(5, reference_p.shape[1])
    top_reference = np.argsort(-reference_p, axis=1)[:, :k]
    top_candidate = np.argsort(-candidate_p, axis=1)[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_reference, top_candidate, strict=True)]
    return Fidelity(
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


def preprocessing_fidelity(
    run: Callable[[np.ndarray], np.ndarray], files: Sequence[bytes], spec: InputSpec, batch_size: int = 16
) -> Fidelity:
    """The model's answers (`run`: (N, S, S, 3) uint8 -> (N, classes) logits) on what the server's
    pre-processing makes of `files`, compared with its answers on `reference_pixels` of the same files."""

    def logits(pixels: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([run(np.stack(pixels[at : at + batch_size])) for at in range(0, len(pixels), batch_size)])

    served = logits([decode_image(data, spec, MAX_PIXELS) for data in files])
    return compare(logits([reference_pixels(data, spec) for data in files]), served)
