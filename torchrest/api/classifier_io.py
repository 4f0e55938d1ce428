"""A classifier in the Open Inference Protocol, whatever the wire (REST /v2, gRPC): its metadata, which
input tensor becomes which images, and which output tensors hold its answer.

    one input: image (BYTES [n], encoded), pixels (UINT8 [n, S, S, 3]) or tensor (FP32 [n, 3, S, S])
    -> one job per image in the model's queue -> labels (BYTES [n, k]) and scores (FP32 [n, k]) for the top
    k (parameter top_k), and probabilities (FP32 [n, classes]) when asked for
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from torchrest.api.tensors import InferRequest, Output
from torchrest.backends import BACKENDS
from torchrest.errors import BadRequest
from torchrest.postprocess import label, top_indices
from torchrest.served import ServedEntry, ServedRuntime
from torchrest.timing import StageTimes

DEFAULT_OUTPUTS = ("labels", "scores")


def metadata(entry: ServedEntry) -> dict[str, Any]:
    """Model metadata: inputs and outputs with name, datatype and shape (-1: any size)."""
    model = entry.model
    side = model.input_spec.crop_size
    return {
        "name": entry.name,
        "versions": [entry.version],
        "platform": platform(entry),
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, side, side, 3]},
            {"name": "tensor", "datatype": "FP32", "shape": [-1, 3, side, side]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.labels)]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ],
    }


def platform(entry: ServedEntry) -> str:
    backend = str(entry.model.metadata.get("backend", "torch"))
    return BACKENDS[backend].platform if backend in BACKENDS else backend


def images_of(parsed: InferRequest, runtime: ServedRuntime) -> list[bytes | np.ndarray]:
    """The request's one input -> one item per image: encoded bytes, or a pixel/tensor array."""
    if len(parsed.inputs) != 1:
        raise BadRequest(f"send exactly one input (image, pixels or tensor), got {len(parsed.inputs)}")
    tensor = parsed.inputs[0]
    side = runtime.model.input_spec.crop_size
    expected = {"image": ("BYTES", None), "pixels": ("UINT8", (side, side, 3)), "tensor": ("FP32", (3, side, side))}
    if tensor.name not in expected:
        raise BadRequest(
            f"unknown input {tensor.name!r}: this model takes image (BYTES), pixels (UINT8) or tensor (FP32)"
        )
    datatype, row_shape = expected[tensor.name]
    if tensor.datatype != datatype:
        raise BadRequest(f"input {tensor.name!r} must be {datatype}, got {tensor.datatype}")
    if row_shape is None:
        if not tensor.data:
            raise BadRequest("input 'image' holds no image")
        if any(not element for element in tensor.data):
            raise BadRequest("input 'image' holds an empty element")
        return list(tensor.data)
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != row_shape or tensor.shape[0] == 0:
        raise BadRequest(
            f"input {tensor.name!r} must have shape [n, {', '.join(map(str, row_shape))}], got {tensor.shape}"
        )
    assert isinstance(tensor.data, np.ndarray)
    batch = tensor.data.reshape(tensor.shape)
    if datatype == "FP32" and not np.isfinite(batch).all():
        raise BadRequest("input 'tensor' holds NaN or infinite values")
    return list(batch)


async def rows_of(
    runtime: ServedRuntime,
    images: list[bytes | np.ndarray],
    deadline_s: float,
    request_id: str,
    times: StageTimes | None = None,
) -> list[np.ndarray]:
    """Every image's row; the first failure (400 for an undecodable image, 504, ...) fails the request."""
    answers = await asyncio.gather(
        *(runtime.infer(image, deadline_s, request_id, times) for image in images), return_exceptions=True
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return [answer.probabilities for answer in answers]  # type: ignore[union-attr]


def output_tensors(parsed: InferRequest, probabilities: np.ndarray, labels: list[str]) -> list[Output]:
    classes = probabilities.shape[1]
    k = parsed.parameters.get("top_k", 1)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= classes:
        raise BadRequest(f"top_k must be an integer from 1 to {classes}, got {k!r}")
    wanted = (
        parsed.outputs if parsed.outputs is not None else {name: parsed.binary_by_default for name in DEFAULT_OUTPUTS}
    )
    n = probabilities.shape[0]
    top = top_indices(probabilities, k)
    outputs = []
    for name, binary in wanted.items():
        binary = binary or parsed.binary_by_default
        if name == "probabilities":
            outputs.append(Output(name, "FP32", [n, classes], probabilities, binary))
        elif name == "scores":
            outputs.append(Output(name, "FP32", [n, k], np.take_along_axis(probabilities, top, axis=1), binary))
        elif name == "labels":
            names = [label(labels, int(i)).encode() for i in top.reshape(-1)]
            outputs.append(Output(name, "BYTES", [n, k], names, binary))
        else:
            raise BadRequest(f"unknown output {name!r}: this model has probabilities, labels and scores")
    return outputs
