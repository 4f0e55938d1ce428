"""Detection, segmentation and embeddings served for real, in one process and with two front-ends: models
whose answers are known by construction (tests/task_models.py: they find solid red, green and blue shapes),
shapes drawn into a non-square photo stored turned with an EXIF orientation, so that letterbox, the
orientation and the mapping back onto the original image are checked to within a pixel of the model's input.
Clients: HTTP, tritonclient's HTTP client, tritonclient's gRPC client (in a process of its own)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server, metric_value, running_server
from tests.grpc_clients import SHAPES
from tests.helpers import clients, start
from tests.task_models import COLOURS, ShapeDetector, export, photo_with_shapes

pytestmark = pytest.mark.slow(seconds=65)
SIZE = (900, 600)  # the photo, upright: wider than tall
CLASS_OF = {"red": 0, "green": 1, "blue": 2}


@pytest.fixture(scope="module")
def repository(task_repository: Path) -> Path:
    return task_repository


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-process", "two-front-ends"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, repository: Path
) -> Iterator[tuple[Server, int]]:
    args = ("--model-repository", str(repository), "--grpc-port", "0", "--workers", request.param)
    args += ("--max-wait-ms", "50")  # concurrent requests wait a little for each other: they batch
    with running_server(tmp_path_factory.mktemp("tasks"), *args) as server:
        assert server.grpc_port is not None
        yield server, server.grpc_port


def post(server: Server, route: str, data: bytes, **params: object) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", files={"image": ("photo.jpg", data)}, params=params, timeout=60)


def tolerance(input_scale: float, pixels: float = 1.5) -> float:
    """How far an edge may move in the original: `pixels` of the model's input, mapped back."""
    return pixels / input_scale + 1


@pytest.mark.parametrize("orientation", [6, 1])
def test_detections_come_back_in_the_original_pixels(served: tuple[Server, int], orientation: int) -> None:
    server, _ = served
    photo, _ = photo_with_shapes(SIZE, SHAPES, orientation)
    response = post(server, "/detect", photo, model="shapes")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["model"] == "shapes"
    assert body["image"] == {"width": 900, "height": 600}
    detections = body["detections"]
    # one box per shape: each echo (a pixel off, less confident) suppressed, each faint one under 0.25
    assert sorted(d["label"] for d in detections) == sorted(SHAPES)
    assert [d["confidence"] for d in detections] == sorted((d["confidence"] for d in detections), reverse=True)
    scale = 320 / 900  # letterboxed into 320 x 320: the longer side fits
    for detection in detections:
        assert detection["class_id"] == CLASS_OF[detection["label"]]
        assert detection["confidence"] == pytest.approx(0.95, abs=1e-5)
        np.testing.assert_allclose(detection["box"], SHAPES[detection["label"]], atol=tolerance(scale))


def test_post_nms_outputs_and_the_per_request_options(served: tuple[Server, int]) -> None:
    server, _ = served
    photo, _ = photo_with_shapes(SIZE, {"red": SHAPES["red"], "blue": SHAPES["blue"]}, 8)
    body = post(server, "/detect", photo, model="shapes_nms").json()
    assert sorted(d["label"] for d in body["detections"]) == ["blue", "red"]  # absent green: score 0, padding
    scale = min(288 / 600, 352 / 900)
    for detection in body["detections"]:
        np.testing.assert_allclose(detection["box"], SHAPES[detection["label"]], atol=tolerance(scale))
    assert post(server, "/detect", photo, model="shapes_nms", score_threshold=0.96).json()["detections"] == []
    assert len(post(server, "/detect", photo, model="shapes", max_detections=1).json()["detections"]) == 1
    # a looser IoU threshold than the echo's overlap with its box keeps the echo
    loose = post(server, "/detect", photo, model="shapes", iou_threshold=0.99).json()["detections"]
    assert len(loose) == 4 and {d["confidence"] for d in loose} == {0.95, 0.9}


def test_a_mask_covers_the_original_image(served: tuple[Server, int]) -> None:
    server, _ = served
    photo, _ = photo_with_shapes(SIZE, SHAPES, 6)
    response = post(server, "/segment", photo, model="regions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": 900, "height": 600}
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]))))
    assert mask.shape == (600, 900) and mask.dtype == np.uint8
    slack = round(tolerance(256 / 900, pixels=2.5))  # the map is at half the input's resolution
    for colour, (x1, y1, x2, y2) in SHAPES.items():
        label = CLASS_OF[colour] + 1
        assert (mask[y1 + slack : y2 - slack, x1 + slack : x2 - slack] == label).all(), colour
        outside = np.ones_like(mask, bool)
        outside[max(0, y1 - slack) : y2 + slack, max(0, x1 - slack) : x2 + slack] = False
        assert not (mask[outside] == label).any(), colour
    counts = {entry["label"]: entry["pixels"] for entry in body["classes"]}
    assert set(counts) == {"background", *SHAPES}
    assert sum(counts.values()) == 900 * 600
    for colour, (x1, y1, x2, y2) in SHAPES.items():
        assert counts[colour] == (mask == CLASS_OF[colour] + 1).sum()
        assert (
            (x2 - x1 - 2 * slack) * (y2 - y1 - 2 * slack)
            < counts[colour]
            < (x2 - x1 + 2 * slack) * (y2 - y1 + 2 * slack)
        )
    as_png = httpx.post(
        f"{server.url}/segment?model=regions", files={"image": photo}, headers={"accept": "image/png"}, timeout=60
    )
    assert as_png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(as_png.content))), mask)


def test_an_embedding_and_its_normalised_form(served: tuple[Server, int]) -> None:
    server, _ = served
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 100, 50)).save(buffer, format="PNG")
    body = post(server, "/embed", buffer.getvalue(), model="colour").json()
    assert body["dimensions"] == 3
    np.testing.assert_allclose(body["embedding"], [200 / 255, 100 / 255, 50 / 255], atol=1e-5)
    unit = post(server, "/embed", buffer.getvalue(), model="colour", normalize="true").json()["embedding"]
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-6)


def test_tritonclient_http_reads_every_task(served: tuple[Server, int]) -> None:
    import tritonclient.http as http_client

    server, _ = served
    client = http_client.InferenceServerClient(server.url.removeprefix("http://"))
    photo, _ = photo_with_shapes(SIZE, SHAPES, 6)
    small, _ = photo_with_shapes((300, 200), {"red": (10, 10, 60, 60)}, 1)
    request = http_client.InferInput("image", [2], "BYTES")
    request.set_data_from_numpy(np.array([photo, small], dtype=np.object_))
    names = ["num_detections", "boxes", "scores", "classes", "labels"]
    result = client.infer(
        "shapes", [request], outputs=[http_client.InferRequestedOutput(n, binary_data=True) for n in names]
    )
    counts = result.as_numpy("num_detections")
    assert counts.tolist() == [3, 1] and result.as_numpy("boxes").shape == (2, 3, 4)
    assert result.as_numpy("scores")[1, 1:].tolist() == [0.0, 0.0]  # the second image's padding
    assert [label.decode() for label in result.as_numpy("labels")[1]] == ["red", "", ""]
    first = {
        CLASS_OF_ID[int(c)]: box
        for c, box in zip(result.as_numpy("classes")[0], result.as_numpy("boxes")[0], strict=True)
    }
    for colour, box in first.items():
        np.testing.assert_allclose(box, SHAPES[colour], atol=tolerance(320 / 900))

    request = http_client.InferInput("image", [1], "BYTES")
    request.set_data_from_numpy(np.array([photo], dtype=np.object_))
    mask = client.infer("regions", [request]).as_numpy("mask")
    assert mask.shape == (1, 600, 900) and set(np.unique(mask)) == {0, 1, 2, 3}
    metadata = client.get_model_metadata("regions")
    assert metadata["tasks"] == ["segment"] and [o["name"] for o in metadata["outputs"]] == ["mask"]
    assert metadata["inputs"][1]["shape"] == [-1, 256, 256, 3]


CLASS_OF_ID = {value: key for key, value in CLASS_OF.items()}


def test_tritonclient_grpc_reads_every_task(served: tuple[Server, int]) -> None:
    _, grpc_port = served
    out = clients("tasks", f"127.0.0.1:{grpc_port}", "-")
    assert out["num_detections"] == [3] and sorted(out["labels"]) == sorted(SHAPES)
    for box, class_id in zip(out["boxes"][0], out["classes"][0], strict=True):
        np.testing.assert_allclose(box, SHAPES[CLASS_OF_ID[class_id]], atol=tolerance(320 / 900))
    assert out["mask_shape"] == [1, 600, 900] and out["mask_classes"] == [0, 1, 2, 3]
    assert out["embedding_shape"] == [1, 3]
    assert out["tasks"] == "detect"
    assert out["outputs"] == ["num_detections", "boxes", "scores", "classes", "labels"]


def test_concurrent_detections_are_one_model_call_and_the_metrics_name_the_task(served: tuple[Server, int]) -> None:
    """A batch of detection requests is one call of the model, across front-ends too."""
    import asyncio

    server, _ = served
    photo, _ = photo_with_shapes(SIZE, SHAPES, 6)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post("/detect?model=shapes", files={"image": photo}) for _ in range(6))
            )
        return [reply.status_code for reply in replies]

    def calls_for_a_burst() -> float:
        before = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert asyncio.run(burst()) == [200] * 6
        after = httpx.get(f"{server.url}/metrics", timeout=10).text
        answered = metric_value(after, "torchrest_answers_total", model="shapes", task="detect")
        assert answered - metric_value(before, "torchrest_answers_total", model="shapes", task="detect") == 6
        return metric_value(after, "torchrest_batch_size_count", model="shapes") - metric_value(
            before, "torchrest_batch_size_count", model="shapes"
        )

    # some of them share a batch; on a machine busy with other work a burst may trickle in, so up to 3 bursts
    assert any(calls_for_a_burst() < 6 for _ in range(3))


def test_classify_and_embed_requests_share_one_model_call(served: tuple[Server, int]) -> None:
    """A model that does two tasks from one call: concurrent /classify and /embed requests ride the same
    batches, and each gets its own task's answer."""
    import asyncio

    server, _ = served
    images = {}
    for name, colour in COLOURS.items():
        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), colour).save(buffer, format="PNG")
        images[name] = buffer.getvalue()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(f"/{route}?model=both", files={"image": images[name]})
                    for name in COLOURS
                    for route in ("classify", "embed")
                )
            )

    before = httpx.get(f"{server.url}/metrics", timeout=10).text
    replies = asyncio.run(burst())
    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name, reply in zip([name for name in COLOURS for _ in range(2)], replies, strict=True):
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        if "prediction" in answer:
            assert answer["prediction"]["label"] == name
        else:
            np.testing.assert_allclose(answer["embedding"], np.array(COLOURS[name]) / 255, atol=0.01)
    for task in ("classify", "embed"):
        answered = metric_value(after, "torchrest_answers_total", model="both", task=task)
        assert answered - metric_value(before, "torchrest_answers_total", model="both", task=task) == 3
    batches = metric_value(after, "torchrest_batch_size_count", model="both") - metric_value(
        before, "torchrest_batch_size_count", model="both"
    )
    assert batches < 6  # some classify and embed requests shared a batch


def test_bad_options_and_other_tasks_are_400s_and_a_broken_output_fails_alone(served: tuple[Server, int]) -> None:
    server, _ = served
    photo, _ = photo_with_shapes((120, 80), {"red": (10, 10, 50, 50)}, 1)
    for params in ({"score_threshold": "abc"}, {"iou_threshold": "-1"}, {"max_detections": "5000"}):
        response = post(server, "/detect", photo, model="shapes", **params)
        assert response.status_code == 400 and response.json()["code"] == "invalid_parameter", params
        assert next(iter(params)) in response.json()["message"]
    wrong = post(server, "/classify", photo, model="shapes")
    assert wrong.status_code == 400 and wrong.json()["code"] == "task_not_served"
    assert "it does detect" in wrong.json()["message"]
    red = io.BytesIO()
    Image.new("RGB", (64, 64), COLOURS["red"]).save(red, format="PNG")
    grey = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(grey, format="PNG")
    broken = post(server, "/classify", red.getvalue(), model="fragile")
    assert broken.status_code == 500 and broken.json()["code"] == "invalid_model_output"
    assert post(server, "/classify", grey.getvalue(), model="fragile").status_code == 200
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_a_mask_past_the_body_limit_is_413(tmp_path: Path, repository: Path) -> None:
    """A photo of random red, green, blue and grey blocks, stored as a 4-colour palette PNG: its upload fits
    the limit, the class mask that answers it (a PNG of the same blocks, base64 in JSON) does not."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 4, (64, 64)).astype(np.uint8).repeat(8, axis=0).repeat(8, axis=1)
    image = Image.fromarray(blocks, "P")
    image.putpalette([value for colour in (*COLOURS.values(), (128, 128, 128)) for value in colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < 4000
    with running_server(tmp_path, "--model-repository", str(repository), "--max-body-mb", str(5000 / 2**20)) as server:
        response = post(server, "/segment", buffer.getvalue(), model="regions")
        assert response.status_code == 413 and response.json()["code"] == "answer_too_large", response.text[:300]
        assert post(server, "/detect", buffer.getvalue(), model="shapes").status_code == 200


def test_a_model_that_does_not_fit_its_task_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = export(ShapeDetector(), (64, 64), tmp_path / "detector.pt2")
    for task, expected in (
        ("segment", "task segment expects an output of shape (N, classes >= 2, height, width); output 0 is (N, 7, 9)"),
        ("classify", "task classify expects an output of shape (N, classes); output 0 is (N, 7, 9)"),
    ):
        result = start("--model", str(path), "--task", task, "--input-size", "64")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [f"torchrest: error: {expected}"]
