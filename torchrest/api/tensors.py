"""The Open Inference Protocol's tensors on the wire: JSON, and Triton's binary tensor data extension.

Request:  [JSON header][binary data of the inputs that declare `binary_data_size`, in input order]
          with `Inference-Header-Content-Length: <length of the JSON header>` (absent: all JSON).
Response: the same shape: outputs asked for as binary carry `binary_data_size` and follow the JSON.
BYTES elements in binary are a 4-byte little-endian length and the bytes; in JSON they are strings
(images: base64). Everything a client can get wrong here is a 400 with the reason, never a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchrest.errors import BadRequest
from torchrest.tasks.base import Output

# the datatypes an input may have, as numpy sees their little-endian bytes (BYTES is handled apart)
NUMERIC = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
HEADER_LENGTH = "inference-header-content-length"


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # numeric: flat array; BYTES: the elements


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: dict[str, bool] | None  # requested output -> binary? (None: the model's defaults)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def binary_by_default(self) -> bool:
        return self.parameters.get("binary_data_output") is True


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request's bytes -> its tensors. Raises BadRequest (400) for anything malformed."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.strip().isdigit():
            raise BadRequest(f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise BadRequest(f"Inference-Header-Content-Length {length} is past the body's {len(body)} bytes")
        header, binary = body[:length], body[length:]
    document = json_object(header)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    parameters = _object(document.get("parameters"), "parameters")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    offset = 0
    tensors = []
    for raw in inputs:
        tensor, offset = _input(raw, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the inputs that no input declares")
    return InferRequest(request_id, tensors, _outputs(document.get("outputs")), parameters)


def json_object(data: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (400 otherwise)."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("the request must be a JSON object")
    return value


def checked_header(name: object, datatype: object, shape: object) -> tuple[str, str, list[int]]:
    """An input's name, datatype and shape, as any wire gives them; BadRequest for what no input can be."""
    if not isinstance(name, str) or not name:
        raise BadRequest("every input needs a 'name'")
    if datatype != "BYTES" and datatype not in NUMERIC:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return name, str(datatype), shape


def checked_tensor(name: str, datatype: str, shape: list[int], data: np.ndarray | list[bytes]) -> Tensor:
    """The tensor, once its data holds as many elements as its shape says."""
    count = math.prod(shape)
    if len(data) != count:
        raise BadRequest(f"input {name!r}: shape {shape} holds {count} elements, the data has {len(data)}")
    return Tensor(name, datatype, shape, data)


def binary_elements(chunk: bytes, datatype: str, name: str) -> np.ndarray | list[bytes]:
    """An input's raw bytes: BYTES elements (4-byte length + bytes each), or little-endian numbers."""
    return _bytes_elements(chunk, name) if datatype == "BYTES" else _numeric_binary(chunk, datatype, name)


def _input(raw: object, binary: bytes, offset: int) -> tuple[Tensor, int]:
    item = _object(raw, "an input")
    name, datatype, shape = checked_header(item.get("name"), item.get("datatype"), item.get("shape"))
    size = _object(item.get("parameters"), f"input {name!r} parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a byte count")
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary_data_size {size} is past the end of the body")
        chunk = binary[offset : offset + size]
        offset += size
        data = binary_elements(chunk, datatype, name)
    elif "data" in item:
        data = _json_bytes(item["data"], name) if datatype == "BYTES" else _numeric_json(item["data"], datatype, name)
    else:
        raise BadRequest(f"input {name!r} has neither 'data' nor a binary_data_size")
    return checked_tensor(name, datatype, shape, data), offset


def _bytes_elements(chunk: bytes, name: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise BadRequest(f"input {name!r}: a BYTES element's 4-byte length is cut off")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise BadRequest(f"input {name!r}: a BYTES element claims {length} bytes, past the data")
        elements.append(chunk[offset : offset + length])
        offset += length
    return elements


def _numeric_binary(chunk: bytes, datatype: str, name: str) -> np.ndarray:
    dtype = NUMERIC[datatype]
    if len(chunk) % dtype.itemsize:
        raise BadRequest(f"input {name!r}: {len(chunk)} bytes is not a whole number of {datatype} values")
    return np.frombuffer(chunk, dtype)


def _numeric_json(data: object, datatype: str, name: str) -> np.ndarray:
    try:
        values = np.asarray(data, dtype=np.float64 if datatype.startswith("FP") else np.int64)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"input {name!r}: 'data' must be a (nested) list of {datatype} numbers") from None
    values = values.reshape(-1)
    dtype = NUMERIC[datatype]
    if dtype.kind in "iu" and values.size:
        limits = np.iinfo(dtype.type)  # type: ignore[type-var]
        if values.min() < limits.min or values.max() > limits.max:
            raise BadRequest(f"input {name!r}: values outside the range of {datatype}")
    return values.astype(dtype)


def _json_bytes(data: object, name: str) -> list[bytes]:
    """JSON BYTES elements: strings; an encoded image travels as base64."""
    flat: list[object] = []
    stack = [data]
    while stack:  # flatten nested lists, keeping row-major order
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    elements = []
    for item in flat:
        if not isinstance(item, str):
            raise BadRequest(f"input {name!r}: BYTES data in JSON must be strings (base64 for binary content)")
        try:
            elements.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {name!r}: a BYTES element is not base64 (send images base64-encoded)") from None
    return elements


def _outputs(raw: object) -> dict[str, bool] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    wanted: dict[str, bool] = {}
    for item in raw:
        output = _object(item, "an output")
        name = output.get("name")
        if not isinstance(name, str):
            raise BadRequest("every output needs a 'name'")
        binary = _object(output.get("parameters"), f"output {name!r} parameters").get("binary_data")
        wanted[name] = binary is True
    return wanted


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def encode_response(document: dict[str, Any], outputs: list[Output]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None)."""
    blobs: list[bytes] = []
    described = []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.binary:
            blob = encode_binary(output)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif output.datatype == "BYTES":
            entry["data"] = [element.decode("utf-8", "replace") for element in output.data]
        else:
            entry["data"] = np.asarray(output.data).reshape(-1).tolist()
        described.append(entry)
    header = json.dumps({**document, "outputs": described}, separators=(",", ":"), ensure_ascii=False).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def encode_binary(output: Output) -> bytes:
    """An output's raw bytes: BYTES elements length-prefixed, numbers little-endian."""
    if output.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(element)) + element for element in output.data)
    return np.ascontiguousarray(output.data, NUMERIC[output.datatype]).tobytes()
