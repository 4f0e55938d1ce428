"""mosec: a decode stage and a batched inference stage, each its own processes, as mosec's docs advise.

    PEER_DECODERS=1 PEER_WORKERS=1 PEER_THREADS=2 PEER_MAX_BATCH=16 PEER_WAIT_MS=10 \\
        python mosec_server.py --port 8000 --timeout 30000

POST /classify with the raw JPEG as the body (mosec hands the body to the first stage as bytes).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from classifier import Classifier, env_int, preprocess
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


if __name__ == "__main__":
    server = Server()
    server.append_worker(Decode, num=env_int("PEER_DECODERS", 1), route="/classify")
    server.append_worker(
        Infer,
        num=env_int("PEER_WORKERS", 1),
        max_batch_size=env_int("PEER_MAX_BATCH", 16),
        max_wait_time=env_int("PEER_WAIT_MS", 10),
        route="/classify",
    )
    server.run()
