"""The peer comparison's own parts, without the peers' environments: the model code every peer serves,
the HTTP client that checks their answers, and the report built from measured rounds."""

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
