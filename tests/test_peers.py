"""The peer comparison's own parts, without the peers' environments: the model code every peer serves (the
classifier's and the detector's), the HTTP client that checks their answers, the check of a detector's
boxes, and the report built from measured rounds."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CAT_LABELS, PHOTOS

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmark"
sys.path.insert(0, str(BENCHMARK))
sys.path.insert(0, str(BENCHMARK / "peers"))

import classifier  # noqa: E402
import detector  # noqa: E402
import peers  # noqa: E402
from openloop import fetch, post  # noqa: E402


@pytest.fixture
def peer_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torchrest.models.efficientnet_lite import published_lite0_weights
    from torchrest.models.labels import imagenet_labels

    (tmp_path / "labels.txt").write_text("\n".join(imagenet_labels()) + "\n")
    for name, value in {
        "PEER_BACKEND": "torch",
        "PEER_MODEL": str(published_lite0_weights()),
        "PEER_LABELS": str(tmp_path / "labels.txt"),
        "PEER_SOURCE": str(BENCHMARK.parent),
    }.items():
        monkeypatch.setenv(name, value)


def test_peers_compute_what_torchrest_computes(peer_model: None) -> None:
    """Same pre-processing result (Pillow's resize 256 + crop 224 against torchrest's decoder) and the
    same answer for every photo."""
    from torchrest.config import ServerConfig
    from torchrest.models.registry import load_model
    from torchrest.preprocess import decode_image

    ours = load_model(ServerConfig())
    assert ours.module is not None
    peer = classifier.Classifier(threads=1)
    for name, photo in PHOTOS.items():
        theirs, mine = classifier.preprocess(photo), decode_image(photo, ours.input_spec, 10**8)
        assert theirs.shape == mine.shape == (224, 224, 3) and theirs.dtype == np.uint8
        assert np.abs(theirs.astype(int) - mine.astype(int)).mean() < 5, name  # cat.jpg: 3.5
        import torch

        with torch.inference_mode():
            logits, _ = ours.module(torch.from_numpy(mine[None]))  # a built-in model gives its features too
            our_label = ours.labels[int(logits.argmax())]
        (label, confidence), *_ = peer.classify(theirs[None])
        assert label == our_label and 0 < confidence <= 1, name
    assert peer.classify(classifier.preprocess(PHOTOS["cat"])[None])[0][0] in CAT_LABELS


class _Answers(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'{"label": ', b'"Egyptian cat"}'):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            body = b'{"label": "tabby"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize(("path", "label"), [("/chunked", "Egyptian cat"), ("/sized", "tabby")])
def test_fetch_reads_chunked_and_sized_bodies(answering: str, path: str, label: str) -> None:
    port = int(answering.rsplit(":", 1)[1])
    status, body = fetch(answering, post("127.0.0.1", port, path, "application/json", b"{}"))
    assert status == 200 and json.loads(body) == {"label": label}


def test_every_split_of_the_cores_is_tried() -> None:
    assert peers.splits(2) == [(1, 2), (2, 1)]
    assert peers.splits(4) == [(1, 4), (2, 2), (4, 1)]
    assert [s.max_batch for s in peers.batching_grid(10)(2)] == [2, 8, 2, 8]


def _round(scale: float) -> dict[str, object]:
    closed = [
        {"connections": c, "req_per_s": scale * c**0.5, "latency_ms": {"p50": 10 / scale, "p90": 12.0, "p99": 20.0}}
        for c in (1, 8, 32, 100)
    ]
    opened = [
        {"share_of_capacity": share, "achieved_rate": 5.0 * scale, "latency_ms": {"p50": 9.0, "p90": 11.0, "p99": 30.0}}
        for share in (0.5, 0.8)
    ]
    for run in closed + opened:
        run |= {"errors": {"timeout": 0}, "error_count": 0}
    return {"closed_loop": closed, "open_loop": opened}


def test_report_takes_medians_and_compares_with_the_best_peer(tmp_path: Path) -> None:
    def server(scales: tuple[float, ...]) -> dict[str, object]:
        rounds = [_round(scale) for scale in scales]
        return {"settings_text": "2 x 1 threads", "request": "multipart", "grid": [], **peers.median_round(rounds)}

    results = {
        "model": "efficientnet_lite0",
        "machine": "2 cores",
        "date": "2026-11-27T00:00:00",
        "command": "python benchmark/peers.py",
        "wall_s": 60.0,
        "optimized": {"candidate": "openvino-fp32", "artifact": "1/model.onnx"},
        "plan": {"rounds": 3, "connections": [1, 8, 32, 100], "open_loop_shares": [0.5, 0.8]},
        "versions": {"torchrest": {"torch": "2.13.0"}},
        "rows": {
            "optimized": {
                "torchrest": server((4.0, 1.0, 5.0)),  # median 4
                "mosec": server((2.0, 2.0, 9.0)),  # median 2
                "kserve": server((1.0, 1.0, 1.0)),
            }
        },
    }
    assert results["rows"]["optimized"]["torchrest"]["closed_loop"][3]["req_per_s"] == pytest.approx(40.0)
    results["aims"] = peers.aims(results)
    aim = results["aims"]["optimized"]
    assert aim["best_peer_at_100"] == "mosec" and aim["throughput_ratio_at_100"] == pytest.approx(2.0)
    assert aim["best_peer_p50_at_1"] == "mosec" and aim["p50_ratio_at_1"] == pytest.approx(0.5)
    table = peers.markdown(results)
    assert "| mosec | 2 x 1 threads | multipart | 2.0 |" in table and "2.00x the best peer (mosec)" in table
    peers.plot(results, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").stat().st_size > 10_000


# -- the detection row -------------------------------------------------------------------------------------
def _box(class_id: int, box: list[float], confidence: float = 0.5) -> dict[str, object]:
    return {"class_id": class_id, "confidence": confidence, "box": box}


def test_box_check_wants_the_reference_boxes() -> None:
    reference = [_box(3, [10, 10, 110, 60], 0.9), _box(3, [200, 10, 300, 60], 0.8), _box(7, [10, 10, 110, 60], 0.7)]
    shifted = [_box(3, [200, 11, 301, 60]), _box(7, [10, 10, 110, 60]), _box(3, [11, 10, 110, 61])]  # reordered
    assert peers.matched_boxes(shifted, reference) == "3 boxes of 2 classes, IoU >= 0.970"
    with pytest.raises(ValueError, match="2 boxes, the reference has 3"):
        peers.matched_boxes(shifted[:2], reference)
    with pytest.raises(ValueError, match="no box of class 7"):
        peers.matched_boxes([shifted[0], _box(3, [10, 10, 110, 60]), shifted[2]], reference)  # a class changed
    with pytest.raises(ValueError, match=r"best 0\.80"):
        peers.matched_boxes([*shifted[:2], _box(3, [10, 10, 110, 50])], reference)  # IoU 0.8
    check = peers.boxes_check(reference)
    assert check(json.dumps({"status": "success", "detections": shifted}).encode()).startswith("3 boxes")
    with pytest.raises(ValueError, match="no detections"):
        check(b"<html>busy</html>")


def test_peer_letterbox_is_torchrest_letterbox() -> None:
    """Pillow's letterbox (the peers' and the naive server's) and torchrest's put the same pixels in the
    same place."""
    from torchrest.model_input import input_spec
    from torchrest.preprocess import decode_fitted

    spec = input_spec((640, 640), 0, "letterbox", "unit")
    for name, photo in PHOTOS.items():
        pixels, placement = detector.letterbox(photo)
        ours, geometry = decode_fitted(photo, spec, 10**8)
        assert pixels.shape == (3, 640, 640) and pixels.dtype == np.float32, name
        assert np.abs(pixels.transpose(1, 2, 0) * 255 - ours).max() <= 1.01, name  # one grey level at most
        assert (placement.left, placement.top) == (geometry.left, geometry.top), name
        assert (placement.width, placement.height) == (geometry.width, geometry.height), name


def test_peer_nms_gives_torchrest_answer() -> None:
    """detector.detections (numpy, per class, one kept box at a time) against torchrest's dense head (torch,
    a block at a time): a known case, then many random ones, both mapped back onto a 512 x 384 image."""
    from torchrest.tasks.base import Geometry
    from torchrest.tasks.detect import DenseDetectHead, DetectOptions

    placement, geometry = detector.Placement(1.25, 0, 80, 512, 384), Geometry(512, 384, 1.25, 1.25, 0.0, 80.0)

    def ours(prediction: np.ndarray) -> list[dict[str, object]]:
        head = DenseDetectHead(0, prediction.shape[0] - 4, prediction.shape[1])
        rows, _ = head.decode([prediction[None]], slice(0, 1), [DetectOptions()])[0]
        boxes = geometry.boxes_to_original(rows[:, :4])
        return [_box(int(row[5]), box.tolist(), float(row[4])) for row, box in zip(rows, boxes, strict=True)]

    # centre x, centre y, width, height; then 3 class scores
    known = np.zeros((7, 5), np.float32)
    known[:4] = np.array(
        [[100, 200, 60, 40], [105, 202, 60, 40], [400, 300, 50, 50], [100, 200, 60, 40], [9, 9, 4, 4]]
    ).T
    known[4 + 1, :3] = (0.9, 0.8, 0.7)  # class 1: the second overlaps the first (IoU 0.75), the third apart
    known[4 + 2, 3] = 0.6  # class 2, on the first box: NMS keeps it (class-aware)
    known[4 + 0, 4] = 0.2  # under the threshold
    found = detector.detections(known, placement)
    assert [(d["class_id"], round(float(d["confidence"]), 2)) for d in found] == [(1, 0.9), (1, 0.7), (2, 0.6)]
    assert found[0]["box"] == pytest.approx([56.0, 80.0, 104.0, 112.0])  # (70, 180, 130, 220) mapped back
    assert peers.matched_boxes(ours(known), found).startswith("3 boxes of 2 classes")
    rng = np.random.default_rng(0)
    for _ in range(20):
        prediction = np.zeros((4 + 5, 300), np.float32)
        prediction[:2] = rng.uniform(0, 640, (2, 300))
        prediction[2:4] = rng.uniform(10, 200, (2, 300))
        prediction[4:] = rng.uniform(0, 1, (5, 300)) ** 8  # few over 0.25, many overlapping
        expected = detector.detections(prediction, placement)
        assert len(expected) > 3 and peers.matched_boxes(ours(prediction), expected)


def test_benchmark_detector_finds_boxes_on_its_photo() -> None:
    """The detection row's network (random weights, BatchNorm calibrated on tests/data) gives the photo it
    is sent some boxes of several classes: a check of zero boxes would check nothing."""
    import torch
    from task_networks import random_detector

    network = random_detector(calibration=peers.DETECT_CALIBRATION)
    pixels, placement = detector.letterbox(peers.DETECT_PHOTO.read_bytes())
    with torch.inference_mode():
        prediction = network(torch.from_numpy(pixels[None])).numpy()[0]
    found = detector.detections(prediction, placement)
    assert 5 <= len(found) < detector.MAX_DETECTIONS and len({d["class_id"] for d in found}) >= 3


def _detect_round(rate: float, refused: int = 0) -> dict[str, object]:
    closed = [
        {
            "connections": c,
            "req_per_s": rate + refused,
            "ok_per_s": rate,
            "latency_ms": {"p50": 90.0 * c, "p99": 150.0 * c},
        }
        | {"errors": {"status": refused, "timeout": 0}, "error_count": refused}
        for c in (1, 100)
    ]
    return {"check": "25 boxes of 14 classes, IoU >= 1.000", "closed_loop": closed, "open_loop": []}


def test_report_of_the_detection_row(tmp_path: Path) -> None:
    def server(rates: tuple[float, ...], refused: int = 0) -> dict[str, object]:
        rounds = [_detect_round(rate, refused) for rate in rates]
        described = {"settings_text": "1 x 2 threads", "request": "multipart", "grid": [], "check": rounds[0]["check"]}
        return described | peers.median_round(rounds)

    results = {
        "machine": "2 cores",
        "date": "2026-12-07T00:00:00",
        "command": "python benchmark/peers.py --rows detect",
        "wall_s": 600.0,
        "plan": {"rounds": 2, "connections": [1, 8, 32, 100], "open_loop_shares": [0.5, 0.8]},
        "plans": {"detect": {"rounds": 2, "connections": [1, 100], "open_loop_shares": []}},
        "detector": {
            "network": "YOLOv8n-sized",
            "weights": "random",
            "parameters": 3157184,
            "photo": "astronaut.jpg",
            "reference": "25 boxes of 14 classes, IoU >= 1.000",
        },
        "versions": {"torchrest": {"onnxruntime": "1.32.0"}},
        "rows": {
            "detect": {
                "torchrest": server((11.0, 12.0), refused=3),  # 503s are not answers
                "naive FastAPI": server((5.0, 6.0)),
                "mosec": server((10.0, 10.0)),
            }
        },
    }
    results["aims"] = peers.aims(results)
    aim = results["aims"]["detect"]
    assert aim["best_peer_at_100"] == "mosec" and aim["throughput_ratio_at_100"] == pytest.approx(1.15)
    table = peers.markdown(results)
    assert (
        "| torchrest | 1 x 2 threads | multipart | 25 boxes of 14 classes, IoU >= 1.000 | 11.5 | 90.0 / 150 |" in table
    )
    assert "| 11.5 | 9,000 / 15,000 | 12 | 0 |" in table  # at 100 connections; 503s: 3 a run, 4 runs
    assert "1.15x the best peer (mosec)" in table and "No --detector-folder" in table
    peers.plot(results, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").stat().st_size > 10_000
