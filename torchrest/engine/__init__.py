"""What the engine process runs: the models (one copy per device) and their life (`manager`), each
model's batch queue and inference threads (`runtime`, `batching`, torchrest.backends), and the service that
takes the front-ends' requests (`service`). With one process (--workers 1) the same manager and runtimes
run beside the HTTP front-end instead."""
