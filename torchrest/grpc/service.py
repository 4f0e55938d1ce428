"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`), a thin translation over
what the HTTP front-end uses: the same model manager, admission, deadlines, access control, classifier
inputs and outputs (`api/tensor_io.py`, the tasks) and metrics (route "grpc").

    ModelInferRequest -> tensors (raw_input_contents, or typed contents) -> images -> the model's queue
    -> labels / scores / probabilities -> ModelInferResponse (raw_output_contents)

A call's gRPC deadline caps the server's --timeout-ms; a cancelled call's queued jobs are dropped before
the model. Errors map to status codes as Triton maps them; the message says what was wrong.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
import numpy as np

from torchrest import __version__
from torchrest.admission import admitted
from torchrest.api.app import AppState
from torchrest.api.tensor_io import answers_of, images_of, metadata, output_tensors, platform, task_of
from torchrest.api.tensors import InferRequest, Output, binary_elements, checked_header, checked_tensor, encode_binary
from torchrest.errors import BadRequest, NotReady, QueueFull, TorchrestError
from torchrest.grpc import inference_pb2 as pb
from torchrest.grpc import inference_pb2_grpc as pb_grpc
from torchrest.served import ModelState
from torchrest.timing import StageTimes
from torchrest.tracing import current as current_tracing

ROUTE = "grpc"
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
EXTENSIONS = ["model_repository", "statistics"]
call_times: ContextVar[StageTimes] = ContextVar("call_times")  # the call being answered (set by `answered`)
Reply = TypeVar("Reply")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Reply]]


def answered(method: Method[Reply]) -> Method[Reply]:
    """Turn a TorchrestError into its gRPC status, count every call in the request metrics, and (with
    tracing on) give the call its span, continuing the caller's `traceparent` from its metadata."""
    name = f"inference.GRPCInferenceService/{method.__name__}"

    @functools.wraps(method)
    async def wrapper(self: InferenceService, request: Any, context: grpc.aio.ServicerContext) -> Reply:
        started = time.monotonic()
        times = StageTimes()
        tracing = current_tracing()
        span = None
        if tracing is not None:
            attributes = {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": name}
            span = tracing.request(name, _metadata(context), started, attributes)
            if span.is_recording():  # sampled: its stages and its batch are worth recording too
                times.marks, times.link = [], tracing.carried(span)
        token = call_times.set(times)
        code, error = grpc.StatusCode.OK, ""
        try:
            return await method(self, request, context)
        except TorchrestError as failure:
            code, error = STATUS_CODES.get(failure.status, grpc.StatusCode.INTERNAL), failure.code
            if isinstance(failure, QueueFull):  # its turn at the refusals' pace (admission.Refusals)
                refusals = self.state.refusals
                waited_s = refusals.delay_s(float(failure.headers.get("retry-after", "1")))
                if waited_s > 0:
                    await asyncio.sleep(waited_s)
                refusals.observe(time.monotonic() - started - waited_s)
            await context.abort(code, failure.message)
            raise  # abort raises; this line is for the type checker
        except BaseException:  # cancelled by the client, or a bug of ours (grpc answers UNKNOWN)
            code, error = grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.UNKNOWN, "internal"
            raise
        finally:
            call_times.reset(token)
            self.state.metrics.requests.labels(ROUTE, code.name).inc()
            if span is not None and tracing is not None:
                tracing.finish(span, times, time.monotonic(), {"rpc.grpc.status_code": code.value[0]}, error)

    return wrapper


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    # -- server ----------------------------------------------------------------------------------------
    @answered
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @answered
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.not_ready_reason() is None)

    @answered
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="torchrest", version=__version__, extensions=EXTENSIONS)

    # -- models ----------------------------------------------------------------------------------------
    @answered
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            self.state.models.runtime(request.name, request.version or None)
        except NotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @answered
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        described = metadata(self.state.models.entry(request.name, request.version or None))
        return pb.ModelMetadataResponse(
            name=described["name"],
            versions=described["versions"],
            platform=described["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described["outputs"]],
        )

    @answered
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        entry = self.state.models.entry(request.name, request.version or None)
        config = self.state.config
        runtime = entry.runtime
        kind = pb.ModelInstanceGroup.KIND_GPU if config.device.startswith("cuda") else pb.ModelInstanceGroup.KIND_CPU
        return pb.ModelConfigResponse(
            config=pb.ModelConfig(
                name=entry.name,
                platform=platform(entry),
                backend=str(entry.model.metadata.get("backend", "torch")),
                max_batch_size=runtime.info.max_batch_size if runtime else config.max_batch_size,
                instance_group=[pb.ModelInstanceGroup(count=runtime.info.instances if runtime else 0, kind=kind)],
                dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=int(config.max_wait_ms * 1000)),
                parameters={"tasks": pb.ModelParameter(string_value=",".join(entry.model.tasks))},
            )
        )

    @answered
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        stats = await self.state.models.statistics(request.name or None, request.version or None)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(row) for row in stats])

    # -- repository ------------------------------------------------------------------------------------
    @answered
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        rows = [row for row in await self.state.models.index() if not request.ready or row["state"] == ModelState.READY]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @answered
    async def RepositoryModelLoad(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self.state.access.check_admin(_metadata(context).get("authorization"))
        await self.state.models.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @answered
    async def RepositoryModelUnload(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self.state.access.check_admin(_metadata(context).get("authorization"))
        await self.state.models.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -------------------------------------------------------------------------------------
    @answered
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.monotonic()
        headers = _metadata(context)
        self.state.access.check_inference(headers.get("authorization"), headers.get("x-api-key"))
        runtime = self.state.models.runtime(request.model_name, request.model_version or None)
        timeout_s = self.state.config.timeout_ms / 1000
        remaining = context.time_remaining()
        deadline = started + (timeout_s if remaining is None else min(timeout_s, remaining))
        times = call_times.get()
        with admitted(runtime, deadline) as places:
            times.mark("admission", started, time.monotonic())
            parsed = infer_request(request)
            task, head = task_of(parsed, runtime.model)
            options = task.v2_options(parsed.parameters, head)
            times.task = task.name
            images = images_of(parsed, runtime)
            places.add(len(images) - 1)
            request_id = request.id or uuid.uuid4().hex[:16]
            answers = await answers_of(runtime, images, deadline, request_id, times, task.name, options)
        outputs = output_tensors(parsed, answers, task, head, options, runtime.model.labels)
        runtime.observe_total(time.monotonic() - started)
        return pb.ModelInferResponse(
            model_name=runtime.name,
            model_version=runtime.model.version,
            id=request.id,
            outputs=[_output_meta(output) for output in outputs],
            raw_output_contents=[encode_binary(output) for output in outputs],
        )


def infer_request(request: Any) -> InferRequest:
    """A ModelInferRequest's tensors, from raw_input_contents (one per input) or each input's contents."""
    if not request.inputs:
        raise BadRequest("send one input: image (BYTES), pixels (UINT8) or tensor (FP32)")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        name, datatype, shape = checked_header(tensor.name, tensor.datatype, list(tensor.shape))
        data = binary_elements(raw[index], datatype, name) if raw else _contents(tensor.contents, datatype, name)
        tensors.append(checked_tensor(name, datatype, shape, data))
    parameters = {key: _parameter(value) for key, value in request.parameters.items()}
    outputs = {output.name: True for output in request.outputs} or None
    return InferRequest(request.id or None, tensors, outputs, parameters)


def _contents(contents: Any, datatype: str, name: str) -> np.ndarray | list[bytes]:
    """Typed contents: bytes_contents for BYTES, uint_contents for UINT8, fp32_contents for FP32."""
    if datatype == "BYTES":
        return list(contents.bytes_contents)
    if datatype == "UINT8":
        values = np.asarray(contents.uint_contents, dtype=np.uint32)
        if values.size and values.max() > 255:
            raise BadRequest(f"input {name!r}: values outside the range of UINT8")
        return values.astype(np.uint8)
    if datatype == "FP32":
        return np.asarray(contents.fp32_contents, dtype=np.float32)
    raise BadRequest(f"input {name!r}: send {datatype} as raw_input_contents")


def _parameter(value: Any) -> object:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _output_meta(output: Output) -> Any:
    return pb.ModelInferResponse.InferOutputTensor(name=output.name, datatype=output.datatype, shape=output.shape)


def _statistics(row: dict[str, Any]) -> Any:
    """Triton's statistics as `ModelStats.as_triton` gives them (the REST form) -> protobuf."""

    def duration(value: dict[str, int]) -> Any:
        return pb.StatisticDuration(count=value["count"], ns=value["ns"])

    inference = row["inference_stats"]
    return pb.ModelStatistics(
        name=row["name"],
        version=row["version"],
        last_inference=row["last_inference"],
        inference_count=row["inference_count"],
        execution_count=row["execution_count"],
        inference_stats=pb.InferStatistics(**{key: duration(value) for key, value in inference.items()}),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=batch["batch_size"],
                **{key: duration(batch[key]) for key in ("compute_input", "compute_infer", "compute_output")},
            )
            for batch in row["batch_stats"]
        ],
    )


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key.lower(): value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
