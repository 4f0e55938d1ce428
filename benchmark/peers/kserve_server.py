"""KServe's Python ModelServer: a `kserve.Model` answering the Open Inference Protocol (v2), with
`--workers` processes as KServe's docs advise (the ModelServer has no batching of its own: KServe batches
in a sidecar agent on Kubernetes, which a single-machine run does not have).

    PEER_THREADS=1 python kserve_server.py --http_port 8000 --workers 2 --grpc_port 0

POST /v2/models/efficientnet_lite0/infer: a BYTES tensor of base64 JPEGs in JSON, answering `labels`
(BYTES) and `scores` (FP32). (KServe 0.21 decodes BYTES sent with the binary tensor extension as UTF-8
text, so a raw JPEG that way is refused: "Failed to encode ... using UTF-8".)
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np
from classifier import Classifier, preprocess
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.model_server import parser

NAME = "efficientnet_lite0"


class ClassifierModel(Model):
    def __init__(self) -> None:
        super().__init__(NAME)
        self.load()

    def load(self) -> bool:
        self.classifier = Classifier()
        self.ready = True
        return self.ready

    def preprocess(self, payload: InferRequest, headers: dict[str, str] | None = None) -> Any:
        images = payload.inputs[0].data
        return payload, np.stack([preprocess(base64.b64decode(image)) for image in images])

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> InferResponse:
        request, batch = payload
        results = self.classifier.classify(batch)
        count = len(results)
        outputs = [
            InferOutput("labels", [count], "BYTES", data=[label for label, _ in results]),
            InferOutput("scores", [count], "FP32", data=[score for _, score in results]),
        ]
        return InferResponse(request.id or str(uuid.uuid4()), model_name=NAME, infer_outputs=outputs)


if __name__ == "__main__":
    args, _ = parser.parse_known_args()
    ModelServer().start([ClassifierModel()])
