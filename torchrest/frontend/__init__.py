"""What each front-end process runs: the HTTP and gRPC front-ends (torchrest.api, torchrest.grpc,
the web page), decode into a shared-memory slot, and the engine's models as seen through the link to the
engine process (`remote`). `process` starts one."""
