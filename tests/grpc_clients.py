"""Real gRPC clients against a running server, each scenario in a process of its own.

tritonclient.grpc and kserve each register the protocol's messages (package `inference`) in protobuf's
default descriptor pool, so one process cannot import both (nor either beside a test that imported the
other). tests/test_grpc.py runs `python tests/grpc_clients.py SCENARIO ADDRESS [ADMIN_TOKEN]` and reads
the JSON it prints.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHOTOS = {
    name: (ROOT / "tests" / "data" / f"{name}.jpg").read_bytes() for name in ("cat", "coffee", "astronaut", "rocket")
}


def triton(address: str, admin_token: str) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from torchrest.model_input import IMAGENET_MEAN, IMAGENET_STD, InputSpec
    from torchrest.preprocess import decode_image

    client = grpcclient.InferenceServerClient(address)
    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server_name": client.get_server_metadata().name,
        "model_ready": client.is_model_ready("lite0"),
        "index": sorted(model.name for model in client.get_model_repository_index().models),
        "inputs": [tensor.name for tensor in client.get_model_metadata("lite0").inputs],
    }

    def infer(tensor: Any, model: str = "lite0", **kwargs: Any) -> Any:
        outputs = [grpcclient.InferRequestedOutput(name) for name in ("labels", "scores", "probabilities")]
        return client.infer(model, [tensor], outputs=outputs, **kwargs)

    def images(*photos: bytes) -> Any:
        tensor = grpcclient.InferInput("image", [len(photos)], "BYTES")
        tensor.set_data_from_numpy(np.array(photos, dtype=np.object_))
        return tensor

    by_image = infer(images(PHOTOS["cat"]))
    out["cat_label"] = by_image.as_numpy("labels")[0][0].decode()
    pixels = decode_image(PHOTOS["cat"], InputSpec(224, 256), 64_000_000)
    uint8 = grpcclient.InferInput("pixels", [1, 224, 224, 3], "UINT8")
    uint8.set_data_from_numpy(pixels[None])
    normalised = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
    fp32 = grpcclient.InferInput("tensor", [1, 3, 224, 224], "FP32")
    fp32.set_data_from_numpy(normalised)
    reference = by_image.as_numpy("probabilities")
    out["uint8_max_difference"] = float(np.abs(infer(uint8).as_numpy("probabilities") - reference).max())
    out["fp32_max_difference"] = float(np.abs(infer(fp32).as_numpy("probabilities") - reference).max())

    order = ["cat", "coffee", "astronaut", "rocket"] * 2
    eight = infer(images(*(PHOTOS[name] for name in order)))
    singles = {name: infer(images(PHOTOS[name])).as_numpy("labels")[0][0].decode() for name in PHOTOS}
    out["eight_match"] = [label[0].decode() for label in eight.as_numpy("labels")] == [singles[n] for n in order]

    answers: list[tuple[str, Any, Any]] = []
    burst = [list(PHOTOS)[i % 4] for i in range(32)]
    for name in burst:

        def answered(result: Any, error: Any, name: str = name) -> None:
            answers.append((name, result, error))

        client.async_infer("lite0", [images(PHOTOS[name])], answered)
    deadline = time.monotonic() + 120
    while len(answers) < 32 and time.monotonic() < deadline:
        time.sleep(0.05)
    out["burst_answered"] = len(answers)
    out["burst_correct"] = sum(
        1
        for name, result, error in answers
        if error is None and result.as_numpy("labels")[0][0].decode() == singles[name]
    )

    def code_of(call: Any) -> str:
        try:
            call()
        except InferenceServerException as error:
            return str(error.status()).removeprefix("StatusCode.")
        return "OK"

    bad_shape = grpcclient.InferInput("pixels", [1, 10, 10, 3], "UINT8")
    bad_shape.set_data_from_numpy(np.zeros((1, 10, 10, 3), np.uint8))
    bad_type = grpcclient.InferInput("image", [1], "INT32")
    bad_type.set_data_from_numpy(np.zeros(1, np.int32))
    out["errors"] = {
        "unknown_model": code_of(lambda: infer(images(PHOTOS["cat"]), model="nope")),
        "bad_shape": code_of(lambda: infer(bad_shape)),
        "bad_datatype": code_of(lambda: infer(bad_type)),
        "load_without_token": code_of(lambda: client.load_model("tiny")),
    }
    admin = {"authorization": f"Bearer {admin_token}"}
    client.unload_model("tiny", headers=admin)
    out["tiny_ready_after_unload"] = client.is_model_ready("tiny")
    client.load_model("tiny", headers=admin)
    out["tiny_ready_after_load"] = client.is_model_ready("tiny")
    stats = client.get_inference_statistics("lite0").model_stats[0]
    out["inference_count"] = stats.inference_count
    out["config_platform"] = client.get_model_config("lite0").config.platform
    client.close()
    return out


def kserve(address: str, admin_token: str) -> dict[str, Any]:
    import asyncio

    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def infer() -> dict[str, Any]:
        """The image as raw_input_contents (binary_data), and its pixels as typed uint_contents (the
        client sends BYTES as contents only when they are UTF-8 text, which an image is not)."""
        from torchrest.model_input import InputSpec
        from torchrest.preprocess import decode_image

        client = InferenceGRPCClient(address)
        answers: dict[str, Any] = {}
        image = InferInput(name="image", shape=[1], datatype="BYTES")
        image.set_data_from_numpy(np.array([PHOTOS["cat"]], dtype=np.object_), binary_data=True)
        pixels = InferInput(name="pixels", shape=[1, 224, 224, 3], datatype="UINT8")
        pixels.set_data_from_numpy(
            decode_image(PHOTOS["cat"], InputSpec(224, 256), 64_000_000)[None], binary_data=False
        )
        for form, tensor in (("raw", image), ("typed", pixels)):
            response = await client.infer(InferRequest(model_name="lite0", infer_inputs=[tensor]))
            labels = next(output for output in response.outputs if output.name == "labels")
            values = labels.as_numpy().ravel()
            answers[form] = [value.decode() if isinstance(value, bytes) else str(value) for value in values]
        await client.close()
        return answers

    return asyncio.run(infer())


def fuzz(address: str, admin_token: str) -> dict[str, Any]:
    """Generated ModelInferRequests (shapes, datatypes, raw contents lengths, huge declared shapes, typed
    contents, parameters): every answer is OK or a documented code, and the server stays up."""
    import grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    seen: dict[str, int] = {}
    unexpected: list[str] = []
    allowed = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE"}
    shapes = st.lists(st.one_of(st.integers(-2, 4), st.integers(2**31, 2**62)), max_size=5)

    @st.composite
    def requests(draw: st.DrawFn) -> Any:
        request = service_pb2.ModelInferRequest(
            model_name=draw(st.sampled_from(["lite0", "tiny", "", "nope"])),
            model_version=draw(st.sampled_from(["", "1", "7", "x"])),
        )
        for _ in range(draw(st.integers(0, 2))):
            tensor = request.inputs.add()
            tensor.name = draw(st.sampled_from(["image", "pixels", "tensor", "other", ""]))
            tensor.datatype = draw(st.sampled_from(["BYTES", "UINT8", "FP32", "INT64", "FP16", "BOGUS", ""]))
            tensor.shape.extend(draw(shapes))
            if draw(st.booleans()):
                tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=64), max_size=3)))
                tensor.contents.uint_contents.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=8)))
                tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        for _ in range(draw(st.integers(0, 3))):
            request.raw_input_contents.append(
                draw(st.one_of(st.binary(max_size=300), st.just(PHOTOS["cat"][: draw(st.integers(0, 2000))])))
            )
        if draw(st.booleans()):
            request.parameters["top_k"].int64_param = draw(st.integers(-5, 2000))
        if draw(st.booleans()):
            request.outputs.add().name = draw(st.sampled_from(["labels", "scores", "probabilities", "other"]))
        return request

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests())
    def check(request: Any) -> None:
        try:
            stub.ModelInfer(request, timeout=30)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        seen[code] = seen.get(code, 0) + 1
        if code not in allowed:
            unexpected.append(f"{code}: {request}"[:500])

    check()
    live = stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
    channel.close()
    return {"codes": seen, "unexpected": unexpected[:5], "live_after": live}


def protocol(address: str, admin_token: str) -> dict[str, Any]:
    """Every message and field of torchrest/grpc/inference.proto against tritonclient's descriptors of the
    protocol: same names, numbers, types and cardinality. Ours is compiled to a descriptor set, never
    loaded into the pool that holds tritonclient's."""
    import tempfile

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc
    from tritonclient.grpc import model_config_pb2, service_pb2

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "set.pb"
        assert (
            protoc.main(["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", "torchrest/grpc/inference.proto"]) == 0
        )
        ours = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    theirs: dict[str, Any] = {}
    for module in (service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in proto.message_type:
            theirs[message.name] = message
    mismatches: list[str] = []
    compared = 0

    def compare(mine: Any, reference: Any, path: str) -> None:
        nonlocal compared
        fields = {field.name: field for field in reference.field}
        for field in mine.field:
            other = fields.get(field.name)
            compared += 1
            if other is None:
                mismatches.append(f"{path}.{field.name}: not in the protocol")
            elif (field.number, field.type, field.label, field.type_name.split(".")[-1]) != (
                other.number,
                other.type,
                other.label,
                other.type_name.split(".")[-1],
            ):
                mismatches.append(f"{path}.{field.name}: {field.number}/{field.type} vs {other.number}/{other.type}")
        nested = {message.name: message for message in reference.nested_type}
        for message in mine.nested_type:
            if message.name not in nested:
                mismatches.append(f"{path}.{message.name}: not in the protocol")
            else:
                compare(message, nested[message.name], f"{path}.{message.name}")

    for message in ours.message_type:
        if message.name not in theirs:
            mismatches.append(f"{message.name}: not in the protocol")
        else:
            compare(message, theirs[message.name], message.name)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.service[0].method:
        reference = service.methods_by_name.get(method.name)
        if reference is None or reference.input_type.name != method.input_type.split(".")[-1]:
            mismatches.append(f"rpc {method.name}: not as the protocol has it")
    return {"messages": len(ours.message_type), "fields": compared, "mismatches": mismatches}


def answers(address: str, model: str) -> dict[str, Any]:
    """Each photo through ModelInfer (tritonclient.grpc, the image as BYTES): its labels and scores."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    out: dict[str, Any] = {"ready": client.is_model_ready(model)}
    for name, photo in PHOTOS.items():
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(output) for output in ("labels", "scores")]
        result = client.infer(model, [tensor], outputs=outputs)
        out[name] = {
            "labels": [label.decode() for label in result.as_numpy("labels")[0]],
            "scores": result.as_numpy("scores")[0].tolist(),
        }
    return out


def tasks(address: str, argument: str) -> dict[str, Any]:
    """The constructed models of tests/task_models.py through tritonclient.grpc: a detector, a segmenter and an
    encoder, on the photo with shapes (EXIF-turned), their outputs as the protocol gives them."""
    import tritonclient.grpc as grpcclient

    from tests.task_models import photo_with_shapes

    photo, _ = photo_with_shapes((900, 600), SHAPES, orientation=6)
    client = grpcclient.InferenceServerClient(address)

    def infer(model: str, outputs: list[str], **parameters: Any) -> Any:
        request = grpcclient.InferInput("image", [1], "BYTES")
        request.set_data_from_numpy(np.array([photo], dtype=np.object_))
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        return client.infer(model, [request], outputs=wanted, parameters=parameters or None)

    detected = infer("shapes", ["num_detections", "boxes", "scores", "classes", "labels"], score_threshold=0.5)
    segmented = infer("regions", ["mask"])
    embedded = infer("colour", ["embedding"])
    config = client.get_model_config("shapes", as_json=True)["config"]
    return {
        "num_detections": detected.as_numpy("num_detections").tolist(),
        "boxes": detected.as_numpy("boxes").tolist(),
        "scores": detected.as_numpy("scores").tolist(),
        "classes": detected.as_numpy("classes").tolist(),
        "labels": [label.decode() for label in detected.as_numpy("labels").reshape(-1)],
        "mask_shape": list(segmented.as_numpy("mask").shape),
        "mask_classes": sorted(np.unique(segmented.as_numpy("mask")).tolist()),
        "embedding_shape": list(embedded.as_numpy("embedding").shape),
        "tasks": config["parameters"]["tasks"]["string_value"],
        "outputs": [output["name"] for output in client.get_model_metadata("shapes", as_json=True)["outputs"]],
    }


SHAPES = {"red": (100, 80, 340, 260), "green": (420, 300, 600, 520), "blue": (700, 60, 860, 200)}


def traced(address: str, traceparent: str) -> dict[str, Any]:
    """One ModelInfer of cat.jpg on the repository's lite0 with the caller's `traceparent` in its metadata."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([PHOTOS["cat"]], dtype=np.object_))
    outputs = [grpcclient.InferRequestedOutput("labels")]
    result = client.infer("lite0", [tensor], outputs=outputs, headers={"traceparent": traceparent})
    return {"label": result.as_numpy("labels")[0][0].decode()}


if __name__ == "__main__":
    # the third argument is the admin token, for `answers` the model's name, for `traced` a traceparent
    scenario, address, token = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")
    scenarios = {"triton": triton, "kserve": kserve, "fuzz": fuzz, "protocol": protocol, "answers": answers}
    scenarios["traced"] = traced
    scenarios["tasks"] = tasks
    print(json.dumps(scenarios[scenario](address, token)))
