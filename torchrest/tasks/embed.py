"""embed: the image as a vector, for search and de-duplication. The model gives one output, (N, D) float
(an encoder's pooled features); the answer is the vector, L2-normalised when the request asks.

    HTTP   POST /embed[?normalize=true] -> {"status", "model", "dimensions", "embedding": [...]}
    v2     embedding (FP32 [n, D]); parameter normalize
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchrest.errors import InvalidModelOutput, ModelLoadError
from torchrest.tasks.base import Answer, Decoded, Output, OutputShape, Rows, flag, json_answer, shown

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


class Embed:
    name = NAME
    route = "/embed"
    outputs: tuple[str, ...] = OUTPUTS
    default_outputs: tuple[str, ...] = OUTPUTS

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[EmbedHead, int]:
        """The head over output `first`: (D,) per image."""
        shape = outputs[first] if first < len(outputs) else None
        if shape is None or len(shape) != 1 or shape[0] < 1:
            raise ModelLoadError(f"task embed expects an output of shape (N, D); output {first} is {shown(shape)}")
        return EmbedHead(first, shape[0]), 1

    def http_options(self, query: Mapping[str, str]) -> bool:
        return flag(query, "normalize")

    def encodes_off_loop(self, answer: Answer) -> bool:
        return False

    def http_body(
        self, answer: Answer, normalize: bool, head: EmbedHead, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        vector = normalized(answer.value) if normalize else answer.value
        return json_answer({"status": "success", "model": model, "dimensions": len(vector), "embedding": vector})

    def v2_options(self, parameters: Mapping[str, object], head: EmbedHead) -> bool:
        return flag(parameters, "normalize")

    def v2_metadata(self, head: EmbedHead) -> list[dict[str, Any]]:
        return [{"name": "embedding", "datatype": "FP32", "shape": [-1, head.dimensions]}]

    def v2_outputs(
        self, answers: list[Answer], normalize: bool, head: EmbedHead, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        vectors = [normalized(a.value) if normalize else a.value for a in answers]
        stacked = np.stack(vectors) if vectors else np.zeros((0, head.dimensions), np.float32)
        return [Output("embedding", "FP32", list(stacked.shape), stacked, binary) for binary in wanted.values()]


TASK = Embed()
