"""`torchrest optimize` end to end: real candidates measured on this machine, the report, the model
folder, and `torchrest serve --model-repository` answering from what it chose."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import CAT_LABELS, DATA, PHOTOS, export_program, running_server, torchrest_command
from tests.helpers import assert_one_line_failure, run_cli, start
from tests.task_models import photo_with_shapes, write_task_repository

pytestmark = pytest.mark.slow(seconds=270)

QUICK = ("--batch-sizes", "1,2", "--seconds-per-point", "0.2", "--fidelity-samples", "200")


def optimize(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(torchrest_command("optimize", *args), capture_output=True, text=True, timeout=600)


def optimize_error(*args: str) -> subprocess.CompletedProcess[str]:
    """`torchrest optimize ARGS` that fails before it measures anything: run in this process."""
    return run_cli("optimize", *args)


def read_report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def by_name(report: dict) -> dict[str, dict]:
    return {candidate["name"]: candidate for candidate in report["candidates"]}


@pytest.fixture(scope="module")
def int8_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """EfficientNet-Lite0 with INT8 (QDQ, run by OpenVINO) as the only contender, any fidelity allowed."""
    out = tmp_path_factory.mktemp("repository")
    result = optimize(
        *("--model", "efficientnet_lite0", "--calibration", str(DATA), "--out", str(out)),
        *("--candidates", "openvino-int8", "--max-top1-disagreement", "100%", "--calibration-samples", "32"),
        *QUICK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "chose openvino-int8" in result.stdout
    yield out


def test_model_folder_holds_artifact_config_labels_and_report(int8_repository: Path) -> None:
    folder = int8_repository / "efficientnet_lite0"
    config = json.loads((folder / "config.json").read_text())
    assert config["backend"] == "openvino" and config["precision"] == "int8"
    assert config["candidate"] == "openvino-int8"
    assert config["crop_size"] == 224 and config["resize_size"] == 256
    assert config["batch_sizes"] == [1, 2] and config["best_batch_size"] in (1, 2)
    assert (folder / config["artifact"]).stat().st_size > 1_000_000
    labels = (folder / config["labels"]).read_text().splitlines()
    assert len(labels) == 1000 and labels[285] == "Egyptian cat"
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (folder / "report.md").read_text()
    assert "| **openvino-int8** | int8 | ok (chosen) |" in table


def test_report_lists_every_candidate_with_its_status(int8_repository: Path) -> None:
    report = read_report(int8_repository / "efficientnet_lite0")
    assert report["chosen"] == "openvino-int8" and report["samples"]["held_out"] == 200
    candidates = by_name(report)
    assert [c["name"] for c in report["candidates"] if c["chosen"]] == ["openvino-int8"]
    reference = candidates["torch-eager"]
    assert reference["status"] == "ok" and reference["verdicts"][0]["value"] == 1.0
    assert reference["verdicts"][0]["details"]["max_probability_diff"] == 0.0
    int8 = candidates["openvino-int8"]
    assert set(int8["throughput"]) == {"1", "2"} and int8["best_throughput"] > 0
    (agreement,) = int8["verdicts"]
    assert int8["latency_bs1_ms"] > 0 and agreement["measure"] == "top-1 agreement" and 0 < agreement["value"] <= 1
    assert 0 < agreement["details"]["top5_overlap"] <= 1 and agreement["details"]["samples"] == 200
    # every candidate is listed: those not named were not run, those that cannot run here say why
    assert set(candidates) >= {"aoti", "onnxruntime-fp32", "openvino-fp32", "onnxruntime-int8"}
    assert candidates["onnxruntime-fp32"]["status"] == "skipped"
    assert candidates["onnxruntime-fp32"]["reason"] == "not named in --candidates"
    if not torch.cuda.is_available():
        assert candidates["torch-fp16"]["reason"] == "needs --device cuda"


def test_served_layouts_are_measured_and_the_best_written_to_config(int8_repository: Path) -> None:
    folder = int8_repository / "efficientnet_lite0"
    report = read_report(folder)
    config = json.loads((folder / "config.json").read_text())
    cores = report["threads"]
    # every split of the cores into instances x threads, at each batch size measured, on the served path
    splits = {(layout["instances"], layout["threads"]) for layout in report["layouts"]}
    assert splits == {(n, cores // n) for n in range(1, cores + 1) if cores % n == 0}
    assert {layout["max_batch_size"] for layout in report["layouts"]} == {1, 2}
    assert all(layout["throughput"] > 0 and layout["p50_ms"] > 0 for layout in report["layouts"])
    chosen = [layout for layout in report["layouts"] if layout["chosen"]]
    assert len(chosen) == 1 and chosen[0]["candidate"] == "openvino-int8"
    assert config["layout"] == {key: chosen[0][key] for key in ("instances", "threads", "max_batch_size")}
    assert config["objective"] == "throughput" and config["best_batch_size"] == chosen[0]["max_batch_size"]
    # both ends: batch-1 on every core, and the served layout's lone request and img/s
    assert config["measured"]["lone_request_p50_ms"] == pytest.approx(chosen[0]["p50_ms"], abs=0.01)
    assert config["measured"]["throughput"] == pytest.approx(chosen[0]["throughput"], abs=0.1)
    assert config["measured"]["batch1_ms_all_cores"] > 0
    assert "Served layouts" in (folder / "report.md").read_text()


def test_serve_model_repository_answers_with_the_int8_model_in_its_layout(
    int8_repository: Path, tmp_path: Path
) -> None:
    layout = json.loads((int8_repository / "efficientnet_lite0" / "config.json").read_text())["layout"]
    with running_server(tmp_path, "--model-repository", str(int8_repository)) as server:
        answer = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=60).json()
        assert answer["status"] == "success"
        assert answer["prediction"]["label"] in CAT_LABELS
        info = httpx.get(server.url, timeout=10).json()
        assert info["model"]["backend"] == "openvino" and info["model"]["precision"] == "int8"
        # config.json's layout and batch cap, not re-timed at start-up
        assert info["batching"]["instances"] == layout["instances"]
        assert info["batching"]["threads_per_instance"] == layout["threads"]
        assert info["batching"]["max_batch_size"] == layout["max_batch_size"]
        assert "timed at start-up" not in server.log()
    # flags win over config.json, and --tune-batch re-times the batch cap
    flags = ("--model-repository", str(int8_repository), "--instances", "1", "--max-batch-size", "3")
    with running_server(tmp_path, *flags) as server:
        batching = httpx.get(server.url, timeout=10).json()["batching"]
        assert batching["instances"] == 1 and batching["max_batch_size"] == 3
    with running_server(tmp_path, "--model-repository", str(int8_repository), "--tune-batch") as server:
        assert "timed at start-up" in server.log()


def test_int8_mixed_keeps_the_most_harmful_layers_in_float(tmp_path: Path) -> None:
    # a 0% bound: whole-graph INT8 Lite0 breaks it on the augmented views, so the search ranks every
    # layer by its harm and keeps the most harmful in float, as few as it can
    result = optimize(
        *("--model", "efficientnet_lite0", "--calibration", str(DATA), "--out", str(tmp_path / "out")),
        *("--candidates", "onnxruntime-int8-mixed,openvino-int8-mixed", "--max-top1-disagreement", "0%"),
        *("--calibration-samples", "16", *QUICK),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(tmp_path / "out" / "efficientnet_lite0")
    assert set(report["mixed_int8"]) == {"openvino", "onnxruntime"}  # each runtime finds its own count
    assert report["mixed_int8"]["openvino"]["harm"] == report["mixed_int8"]["onnxruntime"]["harm"]  # one ranking
    mixed = report["mixed_int8"]["openvino"]
    assert mixed["layers"] > 40 and len(mixed["harm"]) == mixed["layers"]
    assert all(value >= 0 for value in mixed["harm"].values())
    assert mixed["steps"][0]["kept"] == 0 and mixed["steps"][0]["agreement"] < 1
    # the layers kept in float are the most harmful ones, in order, and no more than half of them
    ranked = sorted(mixed["harm"], key=lambda layer: -mixed["harm"][layer])
    assert 0 < len(mixed["kept_float"]) <= mixed["layers"] // 2
    assert mixed["kept_float"] == ranked[: len(mixed["kept_float"])]
    tried = {step["kept"]: step["agreement"] for step in mixed["steps"]}
    assert mixed["agreement"] == tried[len(mixed["kept_float"])]
    if mixed["met_bound"]:
        assert mixed["agreement"] == 1.0
    else:  # the most faithful graph tried
        assert mixed["agreement"] == max(tried.values())
    for name in ("onnxruntime-int8-mixed", "openvino-int8-mixed"):
        candidate = by_name(report)[name]
        assert candidate["status"] in ("ok", "rejected") and "layers kept in float" in candidate["detail"]
    assert "Accuracy-aware INT8" in (tmp_path / "out" / "efficientnet_lite0" / "report.md").read_text()


def small_model(tmp_path: Path) -> tuple[str, ...]:
    """NotExportable's cousin that exports to ONNX: a user's exported classifier of 4 classes at 64 px."""
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)
    )
    path = export_program(network, (2, 3, 64, 64), torch.float32, tmp_path / "small.pt2")
    labels = tmp_path / "labels.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    return ("--model", str(path), "--labels", str(labels), "--input-size", "64", "--resize-size", "72")


def test_labelled_photos_give_accuracy_and_an_accuracy_bound(tmp_path: Path) -> None:
    photos = tmp_path / "labelled"
    for label, photo in (("north", "cat"), ("east", "coffee"), ("unknown-class", "rocket")):
        (photos / label).mkdir(parents=True)
        (photos / label / f"{photo}.jpg").write_bytes(PHOTOS[photo])
    common = (*small_model(tmp_path), "--calibration", str(photos), "--out", str(tmp_path / "out"), *QUICK)
    result = optimize(*common, "--candidates", "onnxruntime-int8", "--max-accuracy-drop", "100%")
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(tmp_path / "out" / "small")
    assert report["bounds"]["max_accuracy_drop"] == 1.0
    assert 0 < report["samples"]["labelled_held_out"] < report["samples"]["held_out"]
    assert report["samples"]["unlabelled_folders"] == ["unknown-class"]
    candidates = by_name(report)
    (verdict,) = candidates["torch-eager"]["verdicts"]
    assert verdict["measure"] == "top-1 accuracy" and 0 <= verdict["details"]["accuracy"] <= 1
    assert candidates["onnxruntime-int8"]["status"] == "ok"
    assert "top-1 accuracy" in (tmp_path / "out" / "small" / "report.md").read_text()
    unlabelled = optimize(
        *small_model(tmp_path), "--calibration", str(DATA), "--out", str(tmp_path / "o2"), "--max-accuracy-drop", "1%"
    )
    assert_one_line_failure(unlabelled, "--max-accuracy-drop needs labelled photos")


def test_unfaithful_candidate_is_rejected_and_the_reference_written(tmp_path: Path) -> None:
    # INT8 Lite0 disagrees with fp32 on a share of the augmented held-out views; a 0% bound rejects it
    result = optimize(
        *("--model", "efficientnet_lite0", "--calibration", str(DATA), "--out", str(tmp_path)),
        *("--candidates", "onnxruntime-int8", "--max-top1-disagreement", "0%", "--calibration-samples", "16"),
        *QUICK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(tmp_path / "efficientnet_lite0")
    int8 = by_name(report)["onnxruntime-int8"]
    assert int8["status"] == "rejected" and not int8["chosen"]
    assert int8["reason"].startswith("top-1 disagreement") and int8["verdicts"][0]["value"] < 1
    assert report["chosen"] == "torch-eager"
    assert json.loads((tmp_path / "efficientnet_lite0" / "config.json").read_text())["backend"] == "torch"


class NotExportable(torch.nn.Module):
    """A user's exported model whose last op has no ONNX function (Hurwitz zeta)."""

    def __init__(self) -> None:
        super().__init__()
        self.classify = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(2.0 + self.classify(x.mean((2, 3))).abs(), 2.0)  # s > 1: finite


def test_candidate_that_crashes_on_export_is_reported_failed_and_the_rest_go_on(tmp_path: Path) -> None:
    model_path = export_program(NotExportable(), (2, 3, 64, 64), torch.float32, tmp_path / "custom.pt2")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    result = optimize(
        *("--model", str(model_path), "--labels", str(labels), "--input-size", "64", "--resize-size", "72"),
        *("--calibration", str(DATA), "--out", str(tmp_path / "out")),
        *("--candidates", "onnxruntime-fp32,aoti"),
        *QUICK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    candidates = by_name(read_report(tmp_path / "out" / "custom"))
    assert candidates["onnxruntime-fp32"]["status"] == "failed"
    assert "No ONNX function found for <OpOverload(op='prims.zeta'" in candidates["onnxruntime-fp32"]["reason"]
    assert candidates["aoti"]["status"] == "ok" and candidates["aoti"]["verdicts"][0]["value"] == 1.0
    assert candidates["aoti"]["detail"].startswith("compiled in ")
    chosen = [name for name, c in candidates.items() if c["chosen"]]
    assert chosen in (["torch-eager"], ["aoti"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--model", "resnet999"), "unknown model 'resnet999'"),
        (("--candidates", "openvino-int4"), "unknown candidate openvino-int4"),
        (("--max-top1-disagreement", "lots"), "--max-top1-disagreement must look like"),
        (("--batch-sizes", "1,zero"), "--batch-sizes must be comma-separated integers"),
        (("--objective", "cheapest"), "--objective must be throughput or latency"),
        (("--max-accuracy-drop", "some"), "--max-accuracy-drop must look like"),
    ],
)
def test_bad_arguments_fail_in_one_line(args: tuple[str, ...], fragment: str, tmp_path: Path) -> None:
    assert_one_line_failure(optimize_error("--calibration", str(DATA), "--out", str(tmp_path), *args), fragment)


def test_non_model_file_fails_in_one_line(tmp_path: Path) -> None:
    notes = tmp_path / "notes.pt2"
    notes.write_text("these are not weights")
    result = optimize_error("--model", str(notes), "--calibration", str(DATA), "--out", str(tmp_path / "out"))
    assert_one_line_failure(result, "is not a model file torchrest reads")


def test_calibration_folder_without_images_fails_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    (empty / "fake.jpg").write_bytes(b"not a jpeg at all")
    result = optimize_error("--calibration", str(empty), "--out", str(tmp_path / "out"))
    assert_one_line_failure(result, "holds no image torchrest can decode")
    assert_one_line_failure(optimize_error("--out", str(tmp_path / "out")), "--calibration DIR is required")


def test_unwritable_output_fails_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = optimize_error("--calibration", str(DATA), "--out", str(blocker / "repository"))
    assert_one_line_failure(result, "cannot write to output folder")


def test_serve_rejects_a_broken_model_folder(tmp_path: Path) -> None:
    assert_one_line_failure(start("--model-repository", str(tmp_path)), "holds no model folder")
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"name": "broken", "backend": "onnxruntime", "artifact": "1/model.onnx"}')
    assert_one_line_failure(start("--model-repository", str(tmp_path)), "names artifact 1/model.onnx, which is missing")
    (folder / "config.json").write_text("{not json")
    assert_one_line_failure(start("--model-repository", str(tmp_path)), "is not readable JSON")


# --- other tasks: each gated by its own measure --------------------------------------------------


def shape_photos(folder: Path, count: int = 10) -> Path:
    """Photos with red, green and blue rectangles of random sizes at random places: what the constructed
    models of tests/task_models.py answer about."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        width, height = int(rng.integers(240, 720)), int(rng.integers(240, 720))
        shapes = {}
        for colour in ("red", "green", "blue"):
            x1, y1 = int(rng.integers(0, width - 80)), int(rng.integers(0, height - 80))
            shapes[colour] = (x1, y1, x1 + int(rng.integers(40, 80)), y1 + int(rng.integers(40, 80)))
        (folder / f"shapes{index}.jpg").write_bytes(photo_with_shapes((width, height), shapes)[0])
    return folder


def test_a_detector_is_gated_by_its_boxes_and_int8_that_moves_them_is_rejected(tmp_path: Path) -> None:
    # the shape detector of the task tests, as a user's model folder (config.json: detect, 320 x 320,
    # letterbox): its INT8 graph quantizes the colour thresholds' inputs and moves the boxes
    repository = write_task_repository(tmp_path / "models", ["shapes"])
    photos = shape_photos(tmp_path / "photos")
    out = tmp_path / "out"
    result = optimize(
        *("--model", str(repository / "shapes"), "--calibration", str(photos), "--out", str(out)),
        *("--candidates", "onnxruntime-fp32,onnxruntime-int8", "--calibration-samples", "16"),
        *("--batch-sizes", "1,2", "--seconds-per-point", "0.2", "--fidelity-samples", "48"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "chose onnxruntime-fp32" in result.stdout and "box match 100.0%" in result.stdout
    folder = out / "shapes"
    report = read_report(folder)
    assert report["tasks"] == ["detect"] and report["bounds"]["min_box_match"] == 0.99
    candidates = by_name(report)
    for name in ("torch-eager", "onnxruntime-fp32"):
        (verdict,) = candidates[name]["verdicts"]
        assert verdict["measure"] == "box match" and verdict["value"] == 1.0 and verdict["passed"]
        assert verdict["details"]["extra_boxes"] == 0.0 and verdict["details"]["reference_boxes"] > 48
    int8 = candidates["onnxruntime-int8"]
    assert int8["status"] == "rejected" and int8["reason"].startswith("boxes matched (IoU >= 0.9)")
    assert int8["verdicts"][0]["value"] < 0.99
    assert "detect: boxes matched; extra" in (folder / "report.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "detect" and config["resize"] == "letterbox" and config["crop_size"] == 320
    assert config["fidelity"] == {"task": "detect", "measure": "box match", "value": 1.0, "bound": 0.99}
    assert config["fidelity_other_tasks"] == [] and config["speedup_vs_eager"] > 0
    assert (folder / "labels.txt").read_text().split() == ["red", "green", "blue"]
    # served as optimize left it: the boxes in the original photo's pixels
    photo, _ = photo_with_shapes((500, 300), {"red": (20, 30, 120, 90), "blue": (300, 150, 420, 260)}, 6)
    with running_server(tmp_path, "--model-repository", str(out)) as server:
        answer = httpx.post(f"{server.url}/detect", files={"image": photo}, timeout=60).json()
    found = {d["label"]: d["box"] for d in answer["detections"]}
    assert set(found) == {"red", "blue"}
    assert found["red"] == pytest.approx([20, 30, 120, 90], abs=2.5)
    assert found["blue"] == pytest.approx([300, 150, 420, 260], abs=2.5)


def test_a_classifier_that_embeds_is_gated_on_both_tasks(tmp_path: Path) -> None:
    repository = write_task_repository(tmp_path / "models", ["both"])
    out = tmp_path / "out"
    result = optimize(
        *("--model", str(repository / "both"), "--calibration", str(shape_photos(tmp_path / "photos")), "--out"),
        *(str(out), "--candidates", "onnxruntime-fp32", "--min-cosine", "0.999", *QUICK),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = out / "both"
    candidates = by_name(read_report(folder))
    onnx = candidates["onnxruntime-fp32"]
    assert [v["measure"] for v in onnx["verdicts"]] == ["top-1 agreement", "min cosine"]
    assert onnx["status"] == "ok" and onnx["verdicts"][1]["value"] > 0.999
    assert onnx["verdicts"][1]["details"]["neighbours_kept"] == 1.0
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "classify,embed" and config["fidelity"]["measure"] == "top-1 agreement"
    assert config["fidelity_other_tasks"][0]["measure"] == "min cosine"
    table = (folder / "report.md").read_text()
    assert "classify: top-1 agreement with fp32 at least 99.0%; and embed: the lowest cosine" in table
    columns = "| classify: top-1 agree | classify: top-5 overlap | classify: max Δp | embed: min cosine; neighbours"
    assert columns in table
    with running_server(tmp_path, "--model-repository", str(out)) as server:
        photo = PHOTOS["cat"]
        embedding = httpx.post(f"{server.url}/embed", files={"image": photo}, timeout=60).json()["embedding"]
        assert len(embedding) == 3 and all(0 <= value <= 1 for value in embedding)  # the mean colour
        assert httpx.post(f"{server.url}/classify", files={"image": photo}, timeout=60).status_code == 200
