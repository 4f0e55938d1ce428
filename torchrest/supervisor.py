"""Starts, watches, restarts and stops the processes of a server with several front-ends; the one place
for their signals.

    torchrest serve --workers N
      supervisor (this process): claims the ports, starts the engine, then N front-ends; waits
        engine     (torchrest.engine.service): the models, their queues and inference threads
        front-end  (torchrest.frontend.process) x N: HTTP/gRPC on the shared ports, decode into slots

- A front-end that dies is started again (its slot file and its live gauges removed first); the others
  and their requests are untouched.
- An engine that dies ends the server with status 1, at once: every front-end's /health says 503 from
  the moment its link breaks, and the supervisor stops them. Restarting the engine inside the server
  would leave the front-ends serving while no model is loaded for as long as a load takes, and lose the
  models loaded through the repository API all the same; an exit lets Kubernetes (or systemd) restart
  the whole server cleanly, with its readiness probe holding traffic off until it is ready.
- SIGTERM (or SIGINT): the front-ends stop accepting and drain what they admitted (the engine still
  answers them), then the engine stops; exit 0. Nothing is left in /dev/shm or the temporary folder.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from torchrest.config import ServerConfig
from torchrest.engine.service import run_engine
from torchrest.frontend.listeners import addresses, claim_ports, tls_options
from torchrest.frontend.process import run_frontend
from torchrest.slots import remove_left

log = logging.getLogger("torchrest.supervisor")

STOP_GRACE_S = 10.0  # after the drain timeout, how long a process gets before it is killed
RESTART_BACKOFF_S = (0.5, 10.0)  # a front-end that keeps dying is restarted less often
QUICK_DEATH_S = 10.0  # a front-end that dies sooner than this after its start failed to start
QUICK_DEATHS = 5  # that many in a row: it never will (a bug, a bad install); the server exits 1


class Supervisor:
    def __init__(self, config: ServerConfig, workers: int, device: str, folder: Path) -> None:
        self.config = config
        self.workers = workers
        self.device = device
        self.folder = folder
        self.socket_path = folder / "engine.sock"
        self.metrics_dir = folder / "metrics"
        self.context = multiprocessing.get_context("spawn")
        self.engine: BaseProcess | None = None
        self.frontends: dict[int, BaseProcess] = {}
        self.backoff_s: dict[int, float] = {}
        self.started_s: dict[int, float] = {}
        self.quick_deaths: dict[int, int] = {}
        self.stopping = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.engine = self._start(
            run_engine, "torchrest-engine", self.config, self.device, self.socket_path, self.metrics_dir
        )
        for index in range(self.workers):
            self.frontends[index] = self._start_frontend(index)
        log.info(
            "torchrest serving on %s: %d front-end processes, one engine process (device %s)",
            addresses(self.config),
            self.workers,
            self.device,
        )
        while not self.stopping:
            watched = [self.engine.sentinel, *(p.sentinel for p in self.frontends.values())]
            multiprocessing.connection.wait(watched, timeout=0.5)
            if self.stopping:
                break
            if not self.engine.is_alive():
                return self._engine_ended()
            for index, process in list(self.frontends.items()):
                if not process.is_alive() and not self._replace(index, process):
                    self._end_frontends(grace_s=1.0)
                    return 1
        return self._stop()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info(
                "%s: draining the front-ends (up to %d s), then the engine",
                signal.Signals(sig).name,
                self.config.drain_timeout,
            )
        self.stopping = True

    def _start(self, target: Callable[..., None], name: str, *args: object) -> BaseProcess:
        process = self.context.Process(target=target, args=args, name=name, daemon=False)
        process.start()
        return process

    def _start_frontend(self, index: int) -> BaseProcess:
        self.started_s[index] = time.monotonic()
        arguments = (self.config, index, self.workers, self.socket_path, os.getpid(), self.metrics_dir)
        return self._start(run_frontend, f"torchrest-frontend-{index}", *arguments)

    def _replace(self, index: int, process: BaseProcess) -> bool:
        """Start front-end `index` again; False when it keeps dying as it starts (the server should end)."""
        self._forget(process, index)
        quick = time.monotonic() - self.started_s.get(index, 0.0) < QUICK_DEATH_S
        self.quick_deaths[index] = self.quick_deaths.get(index, 0) + 1 if quick else 0
        if self.quick_deaths[index] >= QUICK_DEATHS:
            log.error(
                "front-end %d died %d times in a row within %.0f s of starting (last status %s); stopping",
                index,
                QUICK_DEATHS,
                QUICK_DEATH_S,
                process.exitcode,
            )
            return False
        log.error(
            "front-end %d (pid %s) exited with status %s; starting it again", index, process.pid, process.exitcode
        )
        wait_s = self.backoff_s.get(index, 0.0)
        waited_until = time.monotonic() + wait_s
        while time.monotonic() < waited_until and not self.stopping:
            time.sleep(0.05)
        if self.stopping:
            return True  # the server is stopping: nothing to replace
        self.backoff_s[index] = min(max(2 * wait_s, RESTART_BACKOFF_S[0]), RESTART_BACKOFF_S[1])
        self.frontends[index] = self._start_frontend(index)
        return True

    def _forget(self, process: BaseProcess, index: int) -> None:
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid)
        remove_left(os.getpid(), index)

    def _engine_ended(self) -> int:
        assert self.engine is not None
        code = self.engine.exitcode
        if code == 1:
            log.error("the engine could not load the models; stopping")
        else:
            log.error("the engine process exited (status %s); stopping the server so that it is restarted", code)
        self._end_frontends(grace_s=1.0)
        return 1

    def _stop(self) -> int:
        """Drain the front-ends (they still reach the engine), then stop the engine."""
        self._end_frontends(grace_s=self.config.drain_timeout + STOP_GRACE_S)
        status = 0
        if self.engine is not None and self.engine.is_alive():
            self.engine.terminate()
            self.engine.join(STOP_GRACE_S)
            if self.engine.is_alive():
                self.engine.kill()
                self.engine.join()
            status = 0 if self.engine.exitcode in (0, -signal.SIGTERM) else 1
        return status

    def _end_frontends(self, grace_s: float) -> None:
        for process in self.frontends.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + grace_s
        for index, process in self.frontends.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            self._forget(process, index)


def supervise(config: ServerConfig, workers: int, device: str) -> int:
    """Run a server of `workers` front-ends and one engine until it is stopped; the exit status."""
    tls_options(config)  # a bad certificate or key is one line and exit 2, before anything starts
    # held, not listened on, for the server's life: each front-end binds the same ports beside them
    claimed = claim_ports(config, reuse_port=True)
    config = claimed.config
    folder = Path(tempfile.mkdtemp(prefix="torchrest-"))
    metrics_dir = folder / "metrics"
    metrics_dir.mkdir()
    # prometheus_client reads this when it is first imported: in the spawned processes, not in this one
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        return Supervisor(config, workers, device, folder).run()
    finally:
        claimed.close()
        remove_left(os.getpid())
        shutil.rmtree(folder, ignore_errors=True)
