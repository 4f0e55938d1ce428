"""The gRPC listener: grpc.aio on the server's own event loop (no second thread pool competing with the
model for cores), serving the inference service, gRPC health checking (grpc.health.v1: SERVING exactly
when /v2/health/ready is 200, for Kubernetes' gRPC probes) and server reflection (for grpcurl).

SIGTERM stops it accepting calls at once; calls already admitted finish within --drain-timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from torchrest.api.app import AppState
from torchrest.grpc import inference_pb2 as pb
from torchrest.grpc import inference_pb2_grpc as pb_grpc
from torchrest.grpc.service import InferenceService

log = logging.getLogger("torchrest.grpc")
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class ReadinessHealth(health_aio.HealthServicer):
    """Check answers from the server's readiness, not from statuses set by hand."""

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        ready = self.state.not_ready_reason() is None
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


class GrpcListener:
    def __init__(self, state: AppState, host: str, port: int) -> None:
        self.state = state
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server: grpc.aio.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        config = self.state.config
        limit = config.max_body_bytes
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(self.state), server)
        health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealth(self.state), server)
        reflection.enable_server_reflection(
            [SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
        if config.ssl_certfile is not None and config.ssl_keyfile is not None:
            ca = config.ssl_ca_certs.read_bytes() if config.ssl_ca_certs is not None else None
            credentials = grpc.ssl_server_credentials(
                [(config.ssl_keyfile.read_bytes(), config.ssl_certfile.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            server.add_secure_port(self.address, credentials)
        else:
            server.add_insecure_port(self.address)
        await server.start()
        self.server, self.loop = server, asyncio.get_running_loop()
        log.info("gRPC (Open Inference Protocol, health, reflection) on %s", self.address)

    def begin_stop(self, grace_s: float) -> None:
        """Stop accepting calls now; admitted ones get `grace_s` to finish. Safe from a signal handler."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._stop, grace_s)

    def _stop(self, grace_s: float) -> None:
        if self.server is not None and self.stopping is None:
            self.stopping = asyncio.ensure_future(self.server.stop(grace_s))

    async def stopped(self, grace_s: float) -> None:
        """Stop (if SIGTERM has not already) and wait until the admitted calls are done."""
        self._stop(grace_s)
        if self.stopping is not None:
            await self.stopping
