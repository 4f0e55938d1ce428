"""LitServe: one LitAPI with batch/unbatch, `max_batch_size` and `batch_timeout`, `workers_per_device`
inference processes on the CPU, as LitServe's docs advise.

    PEER_WORKERS=2 PEER_THREADS=1 PEER_MAX_BATCH=16 PEER_WAIT_MS=10 PEER_PORT=8000 python litserve_server.py

POST /classify with JSON {"image": "<base64 JPEG>"}, the image input of LitServe's examples. (A
multipart upload reaches `decode_request` as a form that LitServe 0.2.19 cannot hand to its inference
process: "Pickling an AuthenticationString object is disallowed".) With PEER_TASK=detect: POST /detect, the
same JSON, and the detector (detector.py) instead: decode_request letterboxes, predict runs the batch and each
image's NMS.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import litserve as ls
import numpy as np
from classifier import Classifier, env_int, preprocess
from detector import Detector, letterbox


class ClassifierAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.classifier = Classifier()

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe parses JSON
        return preprocess(base64.b64decode(request["image"]))

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, batch: np.ndarray) -> list[tuple[str, float]]:
        return self.classifier.classify(batch)

    def unbatch(self, output: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return output

    def encode_response(self, output: tuple[str, float]) -> dict[str, Any]:
        return {"label": output[0], "confidence": output[1]}


class DetectorAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.detector = Detector()

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe parses JSON
        return letterbox(base64.b64decode(request["image"]))  # the pixels and where they went

    def batch(self, inputs: list[tuple[np.ndarray, Any]]) -> tuple[np.ndarray, list[Any]]:
        return np.stack([pixels for pixels, _ in inputs]), [placed for _, placed in inputs]

    def predict(self, batch: tuple[np.ndarray, list[Any]]) -> list[list[dict[str, Any]]]:
        return self.detector.detect(*batch)

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"detections": output}


if __name__ == "__main__":
    task = os.environ.get("PEER_TASK", "classify")
    api = (DetectorAPI if task == "detect" else ClassifierAPI)(
        max_batch_size=env_int("PEER_MAX_BATCH", 16),
        batch_timeout=env_int("PEER_WAIT_MS", 10) / 1000,
        api_path=f"/{task}",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=env_int("PEER_WORKERS", 1), timeout=30)
    server.run(host="127.0.0.1", port=int(os.environ["PEER_PORT"]), num_api_servers=1, generate_client_file=False)
