"""mosec: a decode stage and a batched inference stage, each its own processes, as mosec's docs advise.

    PEER_DECODERS=1 PEER_WORKERS=1 PEER_THREADS=2 PEER_MAX_BATCH=16 PEER_WAIT_MS=10 \\
        python mosec_server.py --port 8000 --timeout 30000

POST /classify with the raw JPEG as the body (mosec hands the body to the first stage as bytes). With
PEER_TASK=detect: POST /detect, the detector (detector.py) instead: the decode stage letterboxes, the
inference stage runs the batch and each image's NMS.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from classifier import Classifier, env_int, preprocess
from detector import Detector, letterbox
from mosec import Server, Worker


class Decode(Worker):
    def deserialize(self, data: bytes) -> bytes:  # the raw body, not JSON
        return data

    def forward(self, data: bytes) -> Any:
        return preprocess(data)


class Infer(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = Classifier()

    def forward(self, data: list[Any]) -> list[dict[str, Any]]:
        return [{"label": label, "confidence": score} for label, score in self.classifier.classify(np.stack(data))]

    def serialize(self, data: dict[str, Any]) -> bytes:
        return json.dumps(data).encode()


class Letterbox(Decode):
    def forward(self, data: bytes) -> Any:
        return letterbox(data)  # the pixels and where they went, pickled to the next stage


class Detect(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.detector = Detector()

    def forward(self, data: list[Any]) -> list[dict[str, Any]]:
        found = self.detector.detect(np.stack([pixels for pixels, _ in data]), [placed for _, placed in data])
        return [{"detections": detections} for detections in found]

    def serialize(self, data: dict[str, Any]) -> bytes:
        return json.dumps(data).encode()


if __name__ == "__main__":
    task = os.environ.get("PEER_TASK", "classify")
    decode, infer = (Letterbox, Detect) if task == "detect" else (Decode, Infer)
    server = Server()
    server.append_worker(decode, num=env_int("PEER_DECODERS", 1), route=f"/{task}")
    server.append_worker(
        infer,
        num=env_int("PEER_WORKERS", 1),
        max_batch_size=env_int("PEER_MAX_BATCH", 16),
        max_wait_time=env_int("PEER_WAIT_MS", 10),
        route=f"/{task}",
    )
    server.run()
