"""What listens, in either mode (`listeners`), and what each front-end process runs: the HTTP and gRPC
front-ends (torchrest.api, torchrest.grpc, the web page), decode into a shared-memory slot, the engine's
models as the handlers see them (`remote`), and the link to the engine process that carries their
requests (`link`). `process` starts one."""
