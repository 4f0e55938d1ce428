"""What listens, the same in both modes (one process, or each front-end process): the sockets (bound with
SO_REUSEPORT when several front-ends share a port), TLS, uvicorn over the app, the gRPC listener, the
access log line, and the one start/stop sequence around them.

    serve(sockets, models): open the models (load them, or reach the engine) -> gRPC starts -> the loop's
    thread lowered (--event-loop-nice, one process only) -> HTTP serves ... SIGTERM: stop accepting, drain
    HTTP, then gRPC -> close the models -> the exit status
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from torchrest.access import AccessControl
from torchrest.admission import Refusals
from torchrest.api import AppState, build_app
from torchrest.api.http import Receiving
from torchrest.api.protocol import guarded_protocol
from torchrest.config import ServerConfig
from torchrest.errors import StartupError, first_line
from torchrest.metrics import Metrics
from torchrest.priority import lower_this_thread
from torchrest.served import HostedModels

if TYPE_CHECKING:
    from torchrest.grpc.listener import GrpcListener

log = logging.getLogger("torchrest.server")


def serve(
    sockets: list[socket.socket],
    config: ServerConfig,
    metrics: Metrics,
    models: HostedModels,
    *,
    loop_nice: int,
    announce: bool = True,
) -> int:
    """Serve HTTP (and gRPC) on `sockets` until SIGTERM or SIGINT; the exit status. `loop_nice` is added to
    the event loop thread's nice value once the models are open; `announce` logs who may call what."""
    access = AccessControl.from_config(config)
    state = AppState(
        config=config,
        metrics=metrics,
        models=models,
        access=access,
        refusals=Refusals(config.refusal_budget),
        receiving=Receiving(config.max_receiving_bytes),
    )
    grpc_listener = grpc_listener_for(state) if config.grpc_port is not None else None
    server = http_server(state, tls_options(config), grpc_listener)

    def failed() -> None:
        server.should_exit = True

    async def start() -> None:
        await models.open(failed)
        if grpc_listener is not None:
            await grpc_listener.start()
        lower_this_thread(loop_nice)  # the worker threads the models started keep their priority

    async def stop() -> None:
        """After HTTP has drained: let gRPC's admitted calls finish too, then close the models."""
        if grpc_listener is not None:
            await grpc_listener.stopped(config.drain_timeout)
        await models.close()

    state.startup, state.shutdown = start, stop
    if announce:
        log_access(state)
    server.run(sockets=sockets)
    return models.exit_status()


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port (StartupError, one line, if it is taken). `reuse_port`: each front-end
    process binds its own, and the kernel spreads new connections over them by a hash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


@dataclass
class Claimed:
    """The server's ports, bound: `sockets` for uvicorn (HTTP, and /metrics on its own port), `held` bound but
    not listening (the gRPC port, which the gRPC server binds again beside it with SO_REUSEPORT), and the
    config with each port 0 replaced by the free port the kernel gave."""

    sockets: list[socket.socket]
    held: list[socket.socket]
    config: ServerConfig

    def close(self) -> None:
        for sock in (*self.sockets, *self.held):
            sock.close()


def claim_ports(config: ServerConfig, reuse_port: bool = False) -> Claimed:
    """Bind the HTTP port, the metrics port and the gRPC port (StartupError, one line, for one in use); a port
    given as 0 becomes a free one, named in the returned config and so in the serving line of the log."""
    http = bind(config.host, config.port, reuse_port)
    sockets, held, ports = [http], [], {"port": http.getsockname()[1]}
    if config.metrics_port is not None:
        sockets.append(bind(config.host, config.metrics_port, reuse_port))
        ports["metrics_port"] = sockets[-1].getsockname()[1]
    if config.grpc_port is not None:
        held.append(bind(config.host, config.grpc_port, reuse_port=True))
        ports["grpc_port"] = held[-1].getsockname()[1]
    return Claimed(sockets, held, replace(config, **ports))


def addresses(config: ServerConfig) -> str:
    """Where a client reaches the server: `http://HOST:PORT`, and the gRPC and metrics ports when they are on
    (the serving line of the log, which a caller that asked for port 0 reads its port from)."""
    scheme = "https" if config.ssl_certfile else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    extra = [f"gRPC on port {config.grpc_port}"] if config.grpc_port is not None else []
    extra += [f"/metrics on port {config.metrics_port}"] if config.metrics_port is not None else []
    return f"{scheme}://{host}:{config.port}" + "".join(f"; {part}" for part in extra)


def tls_options(config: ServerConfig) -> dict[str, Any]:
    """uvicorn's TLS settings, checked here first so that a bad certificate or key is one line, exit 2."""
    if config.ssl_certfile is None or config.ssl_keyfile is None:
        return {}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
        if config.ssl_ca_certs is not None:
            context.load_verify_locations(config.ssl_ca_certs)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot use the TLS certificate, key or CA bundle: {first_line(exc)}") from None
    options: dict[str, Any] = {"ssl_certfile": str(config.ssl_certfile), "ssl_keyfile": str(config.ssl_keyfile)}
    if config.ssl_ca_certs is not None:
        options |= {"ssl_ca_certs": str(config.ssl_ca_certs), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def grpc_listener_for(state: AppState) -> GrpcListener:
    from torchrest.grpc.listener import GrpcListener  # only with --grpc-port: see torchrest/grpc/__init__.py

    assert state.config.grpc_port is not None
    return GrpcListener(state, state.config.host, state.config.grpc_port)


def http_server(state: AppState, tls: dict[str, Any], grpc_listener: GrpcListener | None) -> DrainingServer:
    """uvicorn over the app, as every process that serves HTTP runs it."""
    config = state.config
    server = DrainingServer(
        uvicorn.Config(
            build_app(state),
            loop="uvloop",
            http=guarded_protocol(
                config.read_timeout,
                connection_limit(config.max_connections, raise_fd_limit()),
                state.metrics.requests.labels("other", 408).inc,
                state.metrics.requests.labels("other", 503).inc,
            ),
            lifespan="on",
            access_log=False,
            log_level=config.log_level,
            timeout_keep_alive=30,
            # SIGTERM: stop accepting, let admitted requests finish (their answers are awaited), then
            # the lifespan shutdown stops the inference threads
            timeout_graceful_shutdown=config.drain_timeout,
            backlog=4096,
            **tls,
        )
    )
    if grpc_listener is not None:
        server.on_exit = lambda: grpc_listener.begin_stop(config.drain_timeout)
    return server


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard one (Linux defaults to 1,024 soft on a much
    higher hard limit); the soft limit now (RLIM_INFINITY: none)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a sandbox that forbids it: the soft limit it is
            pass
    return soft


def connection_limit(configured: int, fd_limit: int) -> int:
    """Open connections one process may hold: `configured`, or what its file descriptor limit allows, less a
    reserve for the rest (models, logs, the engine's socket, shared memory)."""
    allowed = FD_CAP if fd_limit == resource.RLIM_INFINITY else max(64, min(FD_CAP, fd_limit - FD_RESERVE))
    return min(configured, allowed) if configured > 0 else allowed


FD_RESERVE = 512  # descriptors kept for what is not a connection
FD_CAP = 65536  # the most connections a process holds by default, whatever its limit


def log_access(state: AppState) -> None:
    config, access = state.config, state.access
    log.info(
        "access: inference %s; repository load/unload %s%s",  # (the ports: the serving line, addresses())
        "needs an API key" if access.requires_api_key else "open",
        "need the admin token" if access.management_enabled else "off (no --admin-token-file)",
        f"; CORS for {config.cors_origins}" if config.cors_origin_list else "",
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM as an orderly end: stop accepting, drain, exit 0. (uvicorn re-raises the
    signal once it has shut down, which would end the process as killed by SIGTERM.)"""

    on_exit: Callable[[], None] | None = None  # also stop the other front-ends (gRPC) accepting

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.on_exit is not None:
            self.on_exit()
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and captured[-1] == sig:
            captured.pop()
            log.info(
                "SIGTERM: draining admitted requests (up to %.0f s), then exiting",
                self.config.timeout_graceful_shutdown or 0,
            )
