"""Ray Serve: a deployment whose replicas batch with `@serve.batch`, on a local Ray cluster (loopback),
one CPU per replica's thread, as Ray Serve's docs advise.

    PEER_WORKERS=2 PEER_THREADS=1 PEER_MAX_BATCH=16 PEER_WAIT_MS=10 PEER_PORT=8000 python rayserve_server.py

POST /classify with the multipart field `image` (`curl -F image=@cat.jpg`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray
from classifier import Classifier, env_int, preprocess
from ray import serve
from starlette.datastructures import UploadFile
from starlette.requests import Request

WORKERS, THREADS = env_int("PEER_WORKERS", 1), env_int("PEER_THREADS", 1)


@serve.deployment(
    num_replicas=WORKERS,
    ray_actor_options={"num_cpus": THREADS},
    max_ongoing_requests=1024,
)
class ClassifierDeployment:
    def __init__(self) -> None:
        self.classifier = Classifier(THREADS)

    @serve.batch(max_batch_size=env_int("PEER_MAX_BATCH", 16), batch_wait_timeout_s=env_int("PEER_WAIT_MS", 10) / 1000)
    async def classify(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        results = self.classifier.classify(np.stack(images))
        return [{"label": label, "confidence": score} for label, score in results]

    async def __call__(self, request: Request) -> dict[str, Any]:
        image = (await request.form())["image"]
        assert isinstance(image, UploadFile), "the field `image` is a file"
        return await self.classify(preprocess(await image.read()))


if __name__ == "__main__":
    ray.init(num_cpus=WORKERS * THREADS, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["PEER_PORT"])})
    serve.run(ClassifierDeployment.bind(), route_prefix="/classify")  # type: ignore[attr-defined]
    while True:  # serve.run returns once the replicas are up; the driver keeps the cluster alive
        time.sleep(3600)
