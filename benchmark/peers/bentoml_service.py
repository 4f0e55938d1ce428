"""BentoML: a service whose API is batchable (adaptive batching up to `max_batch_size`, its wait chosen
by BentoML within the default `max_latency_ms`; a lower bound sheds load with 503 "process is
overloaded"), `workers` processes, the image taken as a Pillow image as BentoML's docs do.

    PEER_WORKERS=2 PEER_THREADS=1 PEER_MAX_BATCH=16 \\
        bentoml serve bentoml_service:ClassifierService --host 127.0.0.1 --port 8000

POST /classify with the multipart field `image` (`curl -F image=@cat.jpg`).
"""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np
from classifier import Classifier, env_int, resize_crop
from PIL.Image import Image


@bentoml.service(workers=env_int("PEER_WORKERS", 1), traffic={"timeout": 60})
class ClassifierService:
    def __init__(self) -> None:
        self.classifier = Classifier()

    @bentoml.api(route="/classify", batchable=True, max_batch_size=env_int("PEER_MAX_BATCH", 16))
    def classify(self, image: list[Image]) -> list[dict[str, Any]]:
        results = self.classifier.classify(np.stack([resize_crop(one) for one in image]))
        return [{"label": label, "confidence": score} for label, score in results]
