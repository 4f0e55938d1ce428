"""Hostile bytes, generated: mutated real JPEG/PNG/GIF/WebP/BMP files, absurd declared sizes, random
bytes, and broken multipart framing. The decoder raises only its two 4xx errors; the server never
answers 5xx, never hangs, and serves the next real photo correctly."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import CAT_LABELS, PHOTOS, Server
from torchrest.errors import ImageTooLarge, InvalidImage
from torchrest.model_input import InputSpec
from torchrest.preprocess import decode_image

pytestmark = pytest.mark.slow(seconds=25)


def encoded(format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(PHOTOS["cat"])).resize((48, 32)).save(buffer, format=format, **options)
    return buffer.getvalue()


SEEDS = {
    "jpeg": PHOTOS["cat"],
    "png": encoded("PNG"),
    "gif": encoded("GIF"),
    "webp": encoded("WEBP"),
    "bmp": encoded("BMP"),
    "progressive-jpeg": encoded("JPEG", progressive=True, quality=80),
}
OK_STATUSES = {200, 400, 413, 415}


@st.composite
def hostile_images(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([*SEEDS, "random", "huge-png"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=2048))
    if kind == "huge-png":  # a valid PNG header that declares absurd dimensions (bomb signature)
        width = draw(st.integers(1, 2**31 - 1))
        height = draw(st.integers(1, 2**31 - 1))
        data = bytearray(SEEDS["png"])
        ihdr = bytearray(data[12:29])
        ihdr[4:12] = struct.pack(">II", width, height)
        data[12:29] = ihdr
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
        return bytes(data)
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 8))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "header" and len(data) > 32:  # the first 32 bytes hold magic and sizes
            index = draw(st.integers(0, 31))
            data[index] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(hostile_images())
def test_decoder_raises_only_its_own_errors(data: bytes) -> None:
    try:
        pixels = decode_image(data, InputSpec(), max_pixels=64_000_000)
    except (InvalidImage, ImageTooLarge):
        return
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


# every task's route: the default server classifies and embeds; the constructed models detect and segment
ROUTES = ["/classify", "/embed", "/detect?model=shapes", "/segment?model=regions", "/detect?model=shapes_nms"]


@pytest.mark.slow
@settings(max_examples=160, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hostile_images(), as_multipart=st.booleans(), route=st.sampled_from(ROUTES))
def test_server_never_answers_5xx_to_hostile_images(
    server: Server, task_server: Server, data: bytes, as_multipart: bool, route: str
) -> None:
    url = f"{(server if route in ('/classify', '/embed') else task_server).url}{route}"
    if as_multipart:
        response = httpx.post(url, files={"image": data}, timeout=30)
    else:
        response = httpx.post(url, content=data, headers={"content-type": "image/jpeg"}, timeout=30)
    assert response.status_code in OK_STATUSES, response.text
    assert response.json()["status"] in {"success", "failed"}


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(["shapes", "shapes_nms"]),
    option=st.sampled_from(["score_threshold", "iou_threshold", "max_detections"]),
    value=st.one_of(st.text(max_size=12), st.integers(-(10**6), 10**6).map(str), st.floats(allow_nan=True).map(str)),
)
def test_detection_options_are_answered_or_refused_with_400(
    task_server: Server, model: str, option: str, value: str
) -> None:
    params = {"model": model, option: value}
    response = httpx.post(f"{task_server.url}/detect", params=params, files={"image": SEEDS["png"]}, timeout=30)
    assert response.status_code in {200, 400}, response.text
    if response.status_code == 400:
        assert response.json()["code"] == "invalid_parameter" and option in response.json()["message"]


@st.composite
def broken_multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    """A multipart body with its framing damaged, and the content type that announces it."""
    boundary = draw(st.text(alphabet="abcXYZ019-_'()+,./:=?", min_size=1, max_size=70))
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + SEEDS["png"]
        + f"\r\n--{boundary}--\r\n".encode()
    )
    data = bytearray(body)
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if draw(st.booleans()):
            del data[position : position + draw(st.integers(1, 40))]
        else:
            data[position:position] = draw(st.sampled_from([b"\r\n", b"--", b'"', b";", b"\x00", b"\r\n\r\n"]))
    announced = draw(st.sampled_from([boundary, boundary + "x", "", '"' + boundary + '"']))
    return bytes(data), f"multipart/form-data; boundary={announced}" if announced else "multipart/form-data"


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=broken_multipart(), route=st.sampled_from(ROUTES))
def test_server_never_answers_5xx_to_broken_multipart(
    server: Server, task_server: Server, case: tuple[bytes, str], route: str
) -> None:
    body, content_type = case
    url = f"{(server if route in ('/classify', '/embed') else task_server).url}{route}"
    response = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30)
    assert response.status_code in OK_STATUSES, response.text


def test_server_still_serves_after_the_fuzzing(server: Server, task_server: Server) -> None:
    answer = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).json()
    assert answer["prediction"]["label"] in CAT_LABELS
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{task_server.url}/health", timeout=10).status_code == 200
