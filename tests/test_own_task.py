"""A task of one's own, written against torchrest.tasks only (examples/tasks/depth.py), served as a built-in
is: its route, the Open Inference Protocol, front-end processes (--workers 2), metrics and the access log
labelled with its name, its place in GET /, /openapi.json and the page's feed; its own failures are 500
task_failed naming it and leave the server up; a task that cannot be had is one line and exit 2; and
`torchrest optimize` judges it by its own gate, whose bound is a flag of its own.

The depth model is known by construction: depth = 1 + the pixel's brightness (0 black, 1 white), at half the
input's resolution, so a photo black on its left and white on its right has depth 1 there and 2 here."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from examples.tasks.depth import Depth
from tests.conftest import Server, metric_value, running_server, torchrest_command
from tests.helpers import assert_one_line_failure, run_cli
from tests.own_task_models import DEPTH, ROOT, SIZE, Brightness, half_black_half_white, write_repository
from tests.task_models import export
from torchrest.errors import ModelLoadError
from torchrest.tasks.registry import installed, tasks_named

pytestmark = pytest.mark.slow(seconds=60)


@pytest.fixture(scope="module")
def depth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("own-task")
    repository = write_repository(tmp / "models")
    flags = ("--model-repository", str(repository), "--workers", "2", "--log-format", "json", "--grpc-port", "0")
    with running_server(tmp, *flags, env={"PYTHONPATH": str(ROOT)}) as server:
        yield server


def test_the_depth_example_answers_in_the_original_images_pixels(depth_server: Server) -> None:
    photo = half_black_half_white()
    with depth_server.client() as client:
        answer = client.post("/depth", params={"model": "depth"}, files={"image": photo}).json()
        png = client.post("/depth", params={"model": "depth"}, files={"image": photo}, headers={"accept": "image/png"})
        bad = client.post("/depth", params={"model": "depth", "invert": "maybe"}, files={"image": photo})
        inverted = client.post("/depth", params={"model": "depth", "invert": "true"}, files={"image": photo}).json()
    assert answer["status"] == "success" and answer["image"] == {"width": 200, "height": 100}
    assert answer["min"] == pytest.approx(1.0) and answer["max"] == pytest.approx(2.0)
    depth = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["depth"]))))
    assert depth.shape == (100, 200) and depth.dtype.itemsize == 2  # 16-bit, the original's size
    # the letterbox padding (grey 114: depth 1.45) never reaches the map: every row is 1 on the left, 2 on the right
    assert (depth[:, :90] == 0).all() and (depth[:, 110:] == 65535).all()
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), depth)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameter" and "invert" in bad.json()["message"]
    assert inverted["min"] == pytest.approx(0.5) and inverted["max"] == pytest.approx(1.0)


def test_the_depth_example_speaks_the_open_inference_protocol(depth_server: Server) -> None:
    photo = base64.b64encode(half_black_half_white()).decode()
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [photo]}]}
    with depth_server.client() as client:
        metadata = client.get("/v2/models/depth").json()
        answer = client.post("/v2/models/depth/infer", json=request).json()
        ranged = client.post("/v2/models/depth/infer", json=request | {"outputs": [{"name": "range"}]}).json()
    assert metadata["tasks"] == ["depth"] and [o["name"] for o in metadata["outputs"]] == ["depth", "range"]
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["depth"]["shape"] == [1, 100, 200] and outputs["range"]["shape"] == [1, 2]
    depth = np.array(outputs["depth"]["data"], np.float32).reshape(100, 200)
    assert depth[:, :90] == pytest.approx(1.0) and depth[:, 110:] == pytest.approx(2.0)
    assert [o["name"] for o in ranged["outputs"]] == ["range"] and ranged["outputs"][0]["data"] == pytest.approx([1, 2])


def test_a_task_of_ones_own_is_described_measured_and_logged_by_its_name(depth_server: Server) -> None:
    with depth_server.client() as client:
        client.post("/depth", params={"model": "depth"}, files={"image": half_black_half_white()})
        info = client.get("/").json()
        document = client.get("/openapi.json").json()
        feed = client.get("/web/stats").json()
        missing = client.post("/nowhere", files={"image": half_black_half_white()})
    assert "POST /depth" in info["endpoints"] and "POST /classify" in info["endpoints"]
    assert document["paths"]["/depth"]["post"]["parameters"][0]["name"] == "invert"
    answer = document["paths"]["/depth"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"status", "model", "min", "max", "depth"} <= set(answer["required"])
    views = {model["name"]: model["views"] for model in feed["models"]}
    assert views["depth"] == {"depth": {"route": "/depth", "view": "json", "query": {}, "help": Depth.summary}}
    assert missing.status_code == 404
    metrics = depth_server.metrics()
    assert metric_value(metrics, "torchrest_answers_total", model="depth", task="depth") >= 1
    assert metric_value(metrics, "torchrest_requests_total", route="/depth", status="200") >= 1
    lines = [json.loads(line) for line in depth_server.log().splitlines() if line.startswith("{")]
    assert any(line.get("task") == "depth" and line.get("route") == "/depth" for line in lines)


def test_a_tasks_own_failures_are_500_task_failed_and_the_server_goes_on(depth_server: Server) -> None:
    photo = half_black_half_white()
    with depth_server.client() as client:
        batch = client.post("/fragile-depth", params={"model": "fragile", "fail": "batch"}, files={"image": photo})
        answer = client.post("/fragile-depth", params={"model": "fragile", "fail": "answer"}, files={"image": photo})
        fine = client.post("/fragile-depth", params={"model": "fragile"}, files={"image": photo})
        other = client.post("/depth", params={"model": "depth"}, files={"image": photo})
    for failed in (batch, answer):
        assert failed.status_code == 500 and failed.json()["code"] == "task_failed", failed.text
        assert "fragile-depth" in failed.json()["message"]
    assert "batch step broke" in batch.json()["message"] and "answer step broke" in answer.json()["message"]
    assert fine.status_code == 200 and other.status_code == 200


def test_a_task_added_as_one_module_and_one_entry_point_is_served_whole(depth_server: Server) -> None:
    # obb (torchrest/tasks/obb.py): nothing else in torchrest names it; its route, answer and v2 outputs
    photo = half_black_half_white()  # 200 x 100 into 64 x 64: scale 0.32, 16 pixels of padding above
    with depth_server.client() as client:
        answer = client.post("/obb", params={"model": "rotated"}, files={"image": photo}).json()
        strict = client.post("/obb", params={"model": "rotated", "score_threshold": "0.9"}, files={"image": photo})
        image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(photo).decode()]}
        tensors = client.post("/v2/models/rotated/infer", json={"inputs": [image]}).json()
        info = client.get("/").json()
    (found,) = answer["detections"]
    assert found["label"] == "class_1" and 0.25 < found["confidence"] < 0.9
    assert found["box"] == {"center": [100.0, 50.0], "size": [100.0, 50.0], "angle": 0.5}
    assert len(found["corners"]) == 4 and np.mean(found["corners"], axis=0) == pytest.approx([100, 50], abs=0.01)
    assert strict.json()["detections"] == []
    outputs = {output["name"]: output for output in tensors["outputs"]}
    assert outputs["boxes"]["shape"] == [1, 1, 5] and outputs["boxes"]["data"] == pytest.approx([100, 50, 100, 50, 0.5])
    assert outputs["corners"]["shape"] == [1, 1, 4, 2] and outputs["num_detections"]["data"] == [1]
    assert "POST /obb" in info["endpoints"]


def test_a_task_that_cannot_be_had_is_one_line(tmp_path: Path) -> None:
    model = export(Brightness(), (SIZE, SIZE), tmp_path / "depth.pt2")
    classifier = export(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (SIZE, SIZE), tmp_path / "mean.pt2")
    base = ("serve", "--input-size", str(SIZE), "--port", "0")
    assert_one_line_failure(run_cli(*base, "--model", str(model), "--task", "nowhere.at_all:Depth"), "fails to import")
    assert_one_line_failure(run_cli(*base, "--model", str(model), "--task", "examples.tasks.depth:Nope"), "has no Nope")
    assert_one_line_failure(run_cli(*base, "--model", str(model), "--task", "torchrest.errors:BadRequest"), "not a")
    assert_one_line_failure(run_cli(*base, "--model", str(model), "--task", "depthish"), "unknown task 'depthish'")
    refused = run_cli(*base, "--model", str(classifier), "--task", DEPTH)
    assert_one_line_failure(refused, "task depth expects an output (N, 1, height, width); output 0 is (N, 3)")


def test_the_built_in_tasks_are_entry_points_like_anyone_elses() -> None:
    points = installed()
    for name in ("classify", "embed", "detect", "segment"):
        assert points[name].group == "torchrest.tasks" and points[name].value.startswith(f"torchrest.tasks.{name}:")
        (task,) = tasks_named(name)
        assert type(task).__name__ == points[name].value.rpartition(":")[2] and task.route == f"/{name}"
    with pytest.raises(ModelLoadError, match="a task is named twice"):
        tasks_named(f"{DEPTH},examples.tasks.depth:Depth")


@pytest.mark.slow(seconds=90)
def test_optimize_judges_a_task_of_ones_own_by_its_gate_and_its_flag(tmp_path: Path) -> None:
    model = export(Brightness(), (SIZE, SIZE), tmp_path / "depth.pt2")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, (48 + index, 80, 3), np.uint8)).save(photos / f"{index}.png")
    command = torchrest_command(
        "optimize",
        *("--model", str(model), "--task", DEPTH, "--input-size", str(SIZE), "--normalize", "unit"),
        *("--calibration", str(photos), "--out", str(tmp_path / "out"), "--candidates", "onnxruntime-fp32"),
        *("--batch-sizes", "1,2", "--seconds-per-point", "0.2", "--fidelity-samples", "200"),
        *("--calibration-samples", "8", "--depth-min-closeness", "0.999"),
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "out" / "depth"
    report = json.loads((folder / "report.json").read_text())
    assert report["tasks"] == ["depth"] and report["bounds"] == {"depth_min_closeness": 0.999}
    (verdict,) = next(c for c in report["candidates"] if c["name"] == "onnxruntime-fp32")["verdicts"]
    assert verdict["measure"] == "min closeness" and verdict["passed"] and verdict["value"] > 0.999
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == DEPTH and config["fidelity"]["measure"] == "min closeness"
    assert "depth: min closeness" in (folder / "report.md").read_text()
    given = run_cli(
        *("optimize", "--model", str(model), "--task", DEPTH, "--input-size", str(SIZE)),
        *("--depth-min-closeness", "most", "--calibration", str(photos)),
    )
    assert_one_line_failure(given, "--depth-min-closeness must look like a number")
