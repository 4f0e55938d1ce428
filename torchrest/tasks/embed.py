"""embed: the image as a vector, for search and de-duplication. The model gives one output, (N, D) float
(an encoder's pooled features); the answer is the vector, L2-normalised when the request asks.

    HTTP   POST /embed[?normalize=true] -> {"status", "model", "dimensions", "embedding": [...]}
    v2     embedding (FP32 [n, D]); parameter normalize
    optimize   the lowest cosine similarity of an embedding to fp32's >= --min-cosine, and each input's
           nearest neighbour among the others (by cosine) fp32's for >= --min-neighbours-kept of them
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchrest.errors import InvalidModelOutput, ModelLoadError
from torchrest.tasks.base import Answer, Decoded, Output, OutputShape, Rows, Schema, Task, flag, json_answer, shown
from torchrest.tasks.fidelity import Bound, BoundValues, Fidelity, Verdict

NAME = "embed"
OUTPUTS = ("embedding",)


@dataclass(frozen=True, slots=True)
class EmbedHead:
    output: int  # which of the model's outputs it reads
    dimensions: int
    task = NAME

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[Any]) -> list[Decoded]:
        vectors = np.array(outputs[self.output][rows], dtype=np.float32)  # a copy: the buffer is reused
        finite = np.asarray(np.isfinite(vectors).all(axis=1))
        return [
            (vectors[row], -1)
            if bool(finite[row])
            else InvalidModelOutput("the model's embedding for this image holds NaN or infinite values")
            for row in range(len(vectors))
        ]

    def describe(self) -> dict[str, object]:
        return {"dimensions": self.dimensions}


def normalized(vector: np.ndarray) -> np.ndarray:
    """The vector at unit length (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class Embed(Task):
    name = NAME
    summary = "The image as a vector (an encoder's features)"
    resize = "crop"
    outputs: tuple[str, ...] = OUTPUTS
    default_outputs: tuple[str, ...] = OUTPUTS
    view = "pair"
    imagenet_labels = True

    @property
    def fidelity(self) -> Fidelity:
        return EmbedGate()

    def openapi(self) -> tuple[list[Schema], Schema]:
        answer: Schema = {
            "type": "object",
            "required": ["dimensions", "embedding"],
            "properties": {
                "dimensions": {"type": "integer", "minimum": 1},
                "embedding": {"type": "array", "items": {"type": "number"}},
            },
        }
        return [{"name": "normalize", "in": "query", "schema": {"type": "boolean", "default": False}}], answer

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[EmbedHead, int]:
        """The head over output `first`: (D,) per image."""
        shape = outputs[first] if first < len(outputs) else None
        if shape is None or len(shape) != 1 or shape[0] < 1:
            raise ModelLoadError(f"task embed expects an output of shape (N, D); output {first} is {shown(shape)}")
        return EmbedHead(first, shape[0]), 1

    def options(self, parameters: Mapping[str, object]) -> bool:
        return flag(parameters, "normalize")

    def http_body(
        self, answer: Answer, normalize: bool, head: EmbedHead, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        vector = normalized(answer.value) if normalize else answer.value
        return json_answer({"status": "success", "model": model, "dimensions": len(vector), "embedding": vector})

    def v2_metadata(self, head: EmbedHead) -> list[dict[str, Any]]:
        return [{"name": "embedding", "datatype": "FP32", "shape": [-1, head.dimensions]}]

    def v2_outputs(
        self, answers: list[Answer], normalize: bool, head: EmbedHead, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        vectors = [normalized(a.value) if normalize else a.value for a in answers]
        stacked = np.stack(vectors) if vectors else np.zeros((0, head.dimensions), np.float32)
        return [Output("embedding", "FP32", list(stacked.shape), stacked, binary) for binary in wanted.values()]


NEIGHBOUR_TIE = 1e-3  # cosine: two neighbours this close are a tie (views of one photo often are)
MIN_COSINE = Bound(
    "min_cosine", "0.99", "embed: the lowest cosine similarity to fp32's embedding a candidate may give", False, -1, 1
)
MIN_NEIGHBOURS_KEPT = Bound(
    "min_neighbours_kept",
    "99%",
    "embed: the share of held-out inputs whose nearest neighbour (by cosine) must stay fp32's",
)


class EmbedGate(Fidelity):
    """The raw vectors, compared by cosine and by nearest neighbours."""

    measure = "min cosine"
    bounds = (MIN_COSINE, MIN_NEIGHBOURS_KEPT)

    def answers(self, task: str, head: Any, outputs: Sequence[np.ndarray], read: range) -> np.ndarray:
        return np.array(outputs[head.output], dtype=np.float32)

    def judge(self, task: str, reference: Any, candidate: Any, bounds: BoundValues, labels: Any) -> Verdict:
        least, kept_least = bounds[MIN_COSINE.name], bounds[MIN_NEIGHBOURS_KEPT.name]
        assert least is not None and kept_least is not None
        lowest, kept = embedding_agreement(reference, candidate)
        reasons = []
        if lowest < least - 1e-9:
            reasons.append(f"min cosine {lowest:.4f} < {least:.4f}")
        if kept < kept_least - 1e-9:
            reasons.append(f"nearest neighbour kept for {kept:.1%} < {kept_least:.1%}")
        details = {"neighbours_kept": kept, "min_neighbours_kept": kept_least}
        figures = {"min cosine; neighbours kept": f"{lowest:.4f}; {kept:.1%}"}
        gate = (
            f"the lowest cosine similarity to fp32's embedding at least {least:g}, and each input's nearest "
            f"neighbour kept for {kept_least:.1%} of them"
        )
        return Verdict(task, self.measure, lowest, least, not reasons, "; ".join(reasons), details, figures, gate)


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(N, D) each -> (the lowest cosine similarity of a candidate vector to its reference, the share of
    inputs whose nearest other input by cosine is the same under both). Up to ties: the candidate's nearest
    neighbour counts as the reference's when the reference finds it as near, within NEIGHBOUR_TIE."""
    a, b = _unit(reference), _unit(candidate)
    lowest = float(np.min(np.sum(a * b, axis=1)))
    if len(a) < 2:
        return lowest, 1.0
    reference_similarity = _similarity(a)
    chosen = np.argmax(_similarity(b), axis=1)
    rows = np.arange(len(a))
    kept = reference_similarity[rows, chosen] >= reference_similarity.max(axis=1) - NEIGHBOUR_TIE
    return lowest, float(np.mean(kept))


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.nan_to_num(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _similarity(unit: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair, an input with itself left out (-inf)."""
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity
