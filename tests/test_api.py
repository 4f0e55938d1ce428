"""POST /classify, /health, /metrics against the real server with the default model, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    CAT_LABELS,
    PHOTOS,
    TINY_LABELS,
    Server,
    Tiny,
    metric_value,
    running_server,
    write_model_folder,
)

pytestmark = pytest.mark.slow(seconds=36)


def classify(server: Server, image: bytes, **params: object) -> httpx.Response:
    files = {"image": ("photo.jpg", image, "image/jpeg")}
    return httpx.post(f"{server.url}/classify", files=files, params=params, timeout=60)


def test_cat_is_a_cat_seed_compatible_answer(server: Server) -> None:
    response = classify(server, PHOTOS["cat"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    assert body["model"] == "efficientnet_lite0"
    assert body["prediction"]["label"] in CAT_LABELS
    assert 0 < body["prediction"]["confidence"] <= 1
    assert body["top_k"] == [body["prediction"]]
    assert response.headers["x-request-id"]


def test_coffee_is_espresso_with_top_k(server: Server) -> None:
    response = classify(server, PHOTOS["coffee"], top_k=5)
    assert response.status_code == 200, response.text
    top = response.json()["top_k"]
    assert len(top) == 5
    assert top[0]["label"] in {"espresso", "cup"}
    confidences = [entry["confidence"] for entry in top]
    assert confidences == sorted(confidences, reverse=True)
    assert {"espresso", "cup"} <= {entry["label"] for entry in top}


def test_raw_body_with_image_content_type(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/classify", content=PHOTOS["cat"], headers={"content-type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["prediction"]["label"] in CAT_LABELS


def test_png_with_alpha_and_grayscale_are_accepted(server: Server) -> None:
    cat = Image.open(io.BytesIO(PHOTOS["cat"]))
    for image in (cat.convert("RGBA"), cat.convert("L"), cat.convert("P")):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        response = httpx.post(
            f"{server.url}/classify", content=buffer.getvalue(), headers={"content-type": "image/png"}, timeout=60
        )
        assert response.status_code == 200, (image.mode, response.text)
    assert response.json()["prediction"]["label"] in CAT_LABELS | {"Persian cat", "lynx"}


def test_request_id_is_echoed(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/classify",
        content=PHOTOS["cat"],
        headers={"content-type": "image/jpeg", "x-request-id": "abc-123"},
        timeout=60,
    )
    assert response.headers["x-request-id"] == "abc-123"


def test_concurrent_mixed_photos_each_get_their_own_answer_in_batches(server: Server) -> None:
    names = list(PHOTOS)
    expected = {name: classify(server, PHOTOS[name], top_k=3).json()["top_k"] for name in names}
    batches_before = metric_value(server.metrics(), "torchrest_batch_size_count")
    requests_before = metric_value(server.metrics(), "torchrest_batch_size_sum")

    async def burst() -> list[tuple[str, httpx.Response]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            order = [names[i % len(names)] for i in range(32)]
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/classify", params={"top_k": 3}, files={"image": (f"{n}.jpg", PHOTOS[n], "image/jpeg")}
                    )
                    for n in order
                )
            )
            return list(zip(order, responses, strict=True))

    for name, response in asyncio.run(burst()):
        assert response.status_code == 200, response.text
        top = response.json()["top_k"]
        assert [e["label"] for e in top] == [e["label"] for e in expected[name]], name
        for got, want in zip(top, expected[name], strict=True):
            assert abs(got["confidence"] - want["confidence"]) < 1e-3

    metrics = server.metrics()
    batches = metric_value(metrics, "torchrest_batch_size_count") - batches_before
    batched_requests = metric_value(metrics, "torchrest_batch_size_sum") - requests_before
    assert batched_requests == 32
    cap = httpx.get(f"{server.url}/", timeout=10).json()["batching"]["tuned_batch_size"]
    assert 1 <= cap <= 32
    if cap > 1:
        assert batches < 32, "32 concurrent requests ran one by one: no batch larger than 1"
    over_cap = metric_value(metrics, "torchrest_batch_size_count") - metric_value(
        metrics, "torchrest_batch_size_bucket", le=str(float(2 ** (cap - 1).bit_length()))
    )
    assert over_cap == 0, f"a batch larger than the tuned cap {cap} ran"


def test_health_and_metrics_parse(server: Server) -> None:
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ready", "model": "efficientnet_lite0", "models": ["efficientnet_lite0"]}
    classify(server, PHOTOS["cat"])
    text = server.metrics()
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "torchrest_requests",
        "torchrest_request_duration_seconds",
        "torchrest_stage_duration_seconds",
        "torchrest_batch_size",
        "torchrest_queue_depth",
        "torchrest_in_flight",
    } <= families
    for stage in ("preprocess", "queue_wait", "inference", "total"):
        count = metric_value(text, "torchrest_stage_duration_seconds_count", stage=stage)
        assert count > 0, stage
    assert metric_value(text, "torchrest_requests_total", route="/classify", status="200") > 0
    assert metric_value(text, "torchrest_in_flight") == 0


def test_info_describes_the_model(server: Server) -> None:
    info = httpx.get(f"{server.url}/", timeout=10).json()
    assert info["ready"] is True
    assert info["model"]["name"] == "efficientnet_lite0"
    assert info["model"]["pretrained"] is True
    assert info["backend"] == "openvino-fp32" and info["model"]["served_as"].startswith("openvino-fp32")


def test_default_model_is_converted_once_and_answers_as_torch_eager(server: Server, tmp_path: Path) -> None:
    """`--backend auto` (the default) serves the built-in model through OpenVINO fp32, converted at the
    first start and cached; `--backend eager` is the torch reference, and both give the same answers."""
    cached = list(Path(os.environ["TORCHREST_CACHE_DIR"]).glob("efficientnet_lite0-*.onnx"))
    assert len(cached) == 1
    assert "converted for OpenVINO" in server.log() or "the converted form from" in server.log()
    with running_server(tmp_path, "--backend", "eager") as eager:
        assert httpx.get(f"{eager.url}/", timeout=10).json()["backend"] == "torch_eager"
        for name, photo in PHOTOS.items():
            fast = classify(server, photo, top_k=5).json()["top_k"]
            reference = classify(eager, photo, top_k=5).json()["top_k"]
            assert [row["label"] for row in fast] == [row["label"] for row in reference], name
            for mine, theirs in zip(fast, reference, strict=True):
                assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=1e-4), name
    with running_server(tmp_path) as again:  # a second start reads the cached file
        assert "the converted form from" in again.log()


def test_a_lone_request_gets_every_core_and_the_metrics_say_so(tmp_path: Path) -> None:
    """Two instances of one thread each: requests one at a time run on both threads (all_cores); a burst
    runs side by side on each instance's own (own_threads)."""
    write_model_folder(tmp_path / "repository", "tiny", Tiny(0.0), TINY_LABELS)
    args = ("--model-repository", str(tmp_path / "repository"), "--instances", "2", "--threads", "2")
    with running_server(tmp_path, *args, "--max-batch-size", "1") as served:
        for _ in range(10):
            assert classify(served, PHOTOS["cat"]).status_code == 200
        lone = metric_value(served.metrics(), "torchrest_batches_total", model="tiny", cores="all_cores")
        assert lone >= 10

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
                replies = await asyncio.gather(
                    *(
                        client.post("/classify", content=PHOTOS["cat"], headers={"content-type": "image/jpeg"})
                        for _ in range(40)
                    )
                )
            return [reply.status_code for reply in replies]

        assert asyncio.run(burst()) == [200] * 40
        shared = metric_value(served.metrics(), "torchrest_batches_total", model="tiny", cores="own_threads")
        assert shared > 0
