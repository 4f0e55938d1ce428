"""What the engine process runs: the models (one copy per device), their batch queues and inference threads
(torchrest.manager, torchrest.runtime, torchrest.backends), and the service that takes the front-ends'
requests (`service`). With one process (--workers 1) the same manager and runtimes run beside the HTTP
front-end instead."""
