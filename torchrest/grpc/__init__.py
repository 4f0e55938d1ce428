"""The gRPC front-end: the Open Inference Protocol's gRPC service (`service.py`, over the modules
generated from `inference.proto`) and its listener with health checking and reflection (`listener.py`).

Imported only when `--grpc-port` is set: the generated modules register the protocol's messages
(package `inference`) in protobuf's default pool, as tritonclient's and KServe's do."""
