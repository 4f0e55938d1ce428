"""The Open Inference Protocol's wire format (torchrest/api/tensors.py): JSON and binary tensors in,
JSON and binary outputs out, and a clear 400 for every malformed request."""

from __future__ import annotations

import base64
import json
import re
import struct

import numpy as np
import pytest

from torchrest.api.tensors import Output, encode_response, parse_request
from torchrest.errors import BadRequest


def binary_request(header: dict, blobs: list[bytes]) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def bytes_elements(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_binary_bytes_and_numeric_inputs_are_read_in_order() -> None:
    pixels = np.arange(12, dtype=np.uint8)
    header = {
        "id": "r1",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 16}},
            {"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "parameters": {"binary_data_size": 12}},
        ],
        "outputs": [{"name": "labels", "parameters": {"binary_data": True}}, {"name": "scores"}],
    }
    body, length = binary_request(header, [bytes_elements(b"abc", b"defgh"), pixels.tobytes()])
    request = parse_request(body, length)
    assert request.id == "r1"
    assert request.inputs[0].data == [b"abc", b"defgh"]
    assert np.array_equal(request.inputs[1].data, pixels)
    assert request.outputs == {"labels": True, "scores": False}


def test_json_inputs_bytes_are_base64_and_numbers_may_nest() -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"\xff\xd8").decode()]},
                {"name": "tensor", "datatype": "FP32", "shape": [2, 2], "data": [[0.5, -1.0], [2.0, 3.25]]},
            ],
            "parameters": {"top_k": 3, "binary_data_output": True},
        }
    ).encode()
    request = parse_request(body, None)
    assert request.inputs[0].data == [b"\xff\xd8"]
    assert request.inputs[1].data.dtype == np.float32
    assert request.inputs[1].data.tolist() == [0.5, -1.0, 2.0, 3.25]
    assert request.outputs is None and request.binary_by_default and request.parameters["top_k"] == 3


def json_input(**fields: object) -> bytes:
    item = {"name": "pixels", "datatype": "UINT8", "shape": [2], "data": [1, 2]} | fields
    return json.dumps({"inputs": [item]}).encode()


@pytest.mark.parametrize(
    ("body", "length", "reason"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (b'{"inputs": [{}]}', "999", "past the body"),
        (b'{"inputs": [{}]}', "abc", "byte count"),
        (json_input(datatype="COMPLEX"), None, "unknown datatype"),
        (json_input(shape=[3]), None, "holds 3 elements, the data has 2"),
        (json_input(shape=[-1]), None, "non-negative integers"),
        (json_input(data=[1, 300]), None, "outside the range of UINT8"),
        (json_input(data=[[1], [2, 3]]), None, "nested) list"),
        (b'{"inputs": [{"name": "p", "datatype": "UINT8", "shape": [1]}]}', None, "neither 'data'"),
        (json_input(datatype="BYTES", data=["not base64!"]), None, "not base64"),
        (json_input(datatype="BYTES", data=[7, 8]), None, "must be strings"),
        (json_input(datatype="FP32", shape=[1], data=["x"]), None, "FP32 numbers"),
        (b'{"id": 5, "inputs": [{"name": "p", "datatype": "UINT8", "shape": [1], "data": [1]}]}', None, "'id' must"),
    ],
)
def test_malformed_requests_are_400_with_the_reason(body: bytes, length: str | None, reason: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(reason)):
        parse_request(body, length)


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"\x05\x00", "4-byte length is cut off"),
        (struct.pack("<I", 100) + b"short", "claims 100 bytes"),
    ],
)
def test_broken_binary_bytes_elements(blob: bytes, reason: str) -> None:
    header = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(blob)}}]
    }
    with pytest.raises(BadRequest, match=reason):
        parse_request(*binary_request(header, [blob]))


def test_binary_sizes_must_account_for_every_byte() -> None:
    header = {"inputs": [{"name": "p", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    with pytest.raises(BadRequest, match="no input declares"):
        parse_request(*binary_request(header, [b"\x00" * 8]))
    with pytest.raises(BadRequest, match="past the end of the body"):
        parse_request(*binary_request(header, [b"\x00" * 2]))
    header["inputs"][0]["parameters"]["binary_data_size"] = 3
    with pytest.raises(BadRequest, match="whole number of FP32"):
        parse_request(*binary_request(header, [b"\x00" * 3]))


def test_response_json_and_binary_outputs() -> None:
    scores = np.array([[0.75, 0.25]], np.float32)
    outputs = [
        Output("labels", "BYTES", [1, 2], [b"cat", b"dog"], binary=True),
        Output("scores", "FP32", [1, 2], scores, binary=False),
    ]
    body, length = encode_response({"model_name": "m", "model_version": "1", "id": "x"}, outputs)
    assert length is not None
    header = json.loads(body[:length])
    assert header["id"] == "x"
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(body) - length
    assert body[length:] == bytes_elements(b"cat", b"dog")
    assert header["outputs"][1]["data"] == [0.75, 0.25]
    body, length = encode_response({}, [Output("scores", "FP32", [1, 2], scores, binary=True)])
    assert np.array_equal(np.frombuffer(body[length:], "<f4"), scores.reshape(-1))
