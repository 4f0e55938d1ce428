"""A model in the Open Inference Protocol, whatever the wire (REST /v2, gRPC): its metadata, which input
tensor becomes which images, which task the request asks for, and the task's output tensors.

    one input: image (BYTES [n], encoded), pixels (UINT8 [n, H, W, 3]) or tensor (FP32 [n, 3, H, W],
    normalised as the model expects) -> one job per image in the model's queue, all for one task (parameter
    `task`, or the one whose outputs the request names, or the model's own) -> the task's outputs
    (each task's own: Task.v2_outputs)
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from torchrest.api.tensors import InferRequest
from torchrest.backends import BACKENDS
from torchrest.errors import BadRequest, TaskFailed, TaskNotServed, TorchrestError
from torchrest.served import ServedEntry, ServedModel, ServedRuntime
from torchrest.tasks import Answer, Output, Task
from torchrest.timing import StageTimes


def metadata(entry: ServedEntry) -> dict[str, Any]:
    """Model metadata: inputs and outputs with name, datatype and shape (-1: any size), and its tasks."""
    model = entry.model
    height, width = model.input_spec.size
    outputs: list[dict[str, Any]] = []
    heads = model.heads
    for name in model.tasks:
        if heads is not None and name in heads.by_task:
            outputs += heads.task(name).v2_metadata(heads.by_task[name])
    return {
        "name": entry.name,
        "versions": [entry.version],
        "platform": platform(entry),
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, height, width, 3]},
            {"name": "tensor", "datatype": "FP32", "shape": [-1, 3, height, width]},
        ],
        "outputs": outputs,
        "tasks": list(model.tasks),
    }


def platform(entry: ServedEntry) -> str:
    backend = str(entry.model.metadata.get("backend", "torch"))
    return BACKENDS[backend].platform if backend in BACKENDS else backend


def task_of(parsed: InferRequest, model: ServedModel) -> tuple[Task, Any]:
    """The task a request asks of the model, and its head: parameter `task`, else the one of the model's
    tasks that gives every output the request names, else the model's own. 400 when it names another."""
    named = parsed.parameters.get("task")
    if named is not None and (not isinstance(named, str) or named not in model.tasks):
        raise TaskNotServed(f"model {model.name} does not {named!r}: it does {' and '.join(model.tasks)}")
    heads = model.heads
    if heads is None:
        raise TaskNotServed(f"model {model.name} is not bound to its outputs yet: retry once it is ready")
    if named is not None:
        chosen = named
    elif parsed.outputs:
        fitting = [name for name in model.tasks if set(parsed.outputs) <= set(heads.task(name).outputs)]
        chosen = fitting[0] if fitting else model.tasks[0]
    else:
        chosen = model.tasks[0]
    task = heads.task(chosen)
    unknown = [name for name in parsed.outputs or () if name not in task.outputs]
    if unknown:  # before any image is decoded or run
        raise BadRequest(f"unknown output {unknown[0]!r}: this model's {task.name} gives {', '.join(task.outputs)}")
    return task, heads.by_task[chosen]


def images_of(parsed: InferRequest, runtime: ServedRuntime) -> list[bytes | np.ndarray]:
    """The request's one input -> one item per image: encoded bytes, or a pixel/tensor array."""
    if len(parsed.inputs) != 1:
        raise BadRequest(f"send exactly one input (image, pixels or tensor), got {len(parsed.inputs)}")
    tensor = parsed.inputs[0]
    height, width = runtime.model.input_spec.size
    expected = {
        "image": ("BYTES", None),
        "pixels": ("UINT8", (height, width, 3)),
        "tensor": ("FP32", (3, height, width)),
    }
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


async def answers_of(
    runtime: ServedRuntime,
    images: list[bytes | np.ndarray],
    deadline_s: float,
    request_id: str,
    times: StageTimes | None,
    task: str,
    options: object,
) -> list[Answer]:
    """Every image's answer; the first failure (400 for an undecodable image, 504, ...) fails the request."""
    answers = await asyncio.gather(
        *(runtime.infer(image, deadline_s, request_id, times, task, options) for image in images),
        return_exceptions=True,
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return [answer for answer in answers if isinstance(answer, Answer)]


def output_tensors(
    parsed: InferRequest, answers: list[Answer], task: Task, head: Any, options: object, labels: list[str]
) -> list[Output]:
    """The task's outputs the request asked for (its defaults when it named none), each binary when asked."""
    if parsed.outputs is not None:  # names task_of checked
        wanted = {name: binary or parsed.binary_by_default for name, binary in parsed.outputs.items()}
    else:
        wanted = {name: parsed.binary_by_default for name in task.default_outputs or task.outputs}
    try:
        return task.v2_outputs(answers, options, head, labels, wanted)
    except TorchrestError:
        raise
    except Exception as exc:  # the task's own code: this request fails, named, and the server goes on
        raise TaskFailed(f"task {task.name} failed to write its outputs: {type(exc).__name__}: {exc}") from exc
