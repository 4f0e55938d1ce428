"""TorchServe: a custom handler (module-level `handle`, as TorchServe's docs show), workers and
server-side batching (`batchSize`, `maxBatchDelay`) set in the model's entry of config.properties,
which `benchmark/peers.py` writes. The model archive carries this file and classifier.py.

POST /predictions/efficientnet_lite0 with the raw JPEG as the body (`curl -T cat.jpg`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from classifier import Classifier, preprocess

_classifier: Classifier | None = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    global _classifier
    if _classifier is None:
        _classifier = Classifier()
    if data is None:  # the load-time call
        return None
    images = [preprocess(bytes(row.get("data") or row["body"])) for row in data]
    results = _classifier.classify(np.stack(images))
    return [{"label": label, "confidence": score} for label, score in results]
