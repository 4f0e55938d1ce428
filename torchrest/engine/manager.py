"""The models a server holds, each with its own runtime (queue, batcher, instances), and their life:
load, swap in a new version, drain, unload.

    serve --model NAME            one model (built-in or TorchScript), version 1
    serve --model-repository DIR  every folder of DIR: <name>/config.json + <name>/<version>/artifact,
                                  or DIR itself when it is one model folder (KServe's /mnt/models)

A load (at start-up, or `POST /v2/repository/models/{name}/load`) reads the folder again, opens and
warms up a new runtime while the current one keeps serving, then swaps: new requests go to the new
runtime, and the old one is stopped once the requests it admitted are answered. A rollout is thus one
load call and fails no request. An unload marks the model unavailable (503 for new requests), waits for
its admitted requests, then stops it. A load that fails leaves what was serving untouched and says why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchrest.engine.runtime import ModelRuntime
from torchrest.errors import LoadFailed, ModelLoadError, StartupError
from torchrest.models.common import LoadedModel
from torchrest.models.repository import ModelRepository, load_model_folder
from torchrest.priority import started_pool
from torchrest.served import LOADING, READY, UNAVAILABLE, UNLOADING, ModelState, check_model_name, look_up, serving

log = logging.getLogger("torchrest.models")

DRAIN_POLL_S = 0.02


@dataclass(slots=True)
class ModelEntry:
    name: str
    reload: Callable[[], LoadedModel]  # reads the model again (a repository folder may hold a new version)
    model: LoadedModel
    runtime: ModelRuntime | None = None
    state: ModelState = UNAVAILABLE
    reason: str = ""

    @property
    def version(self) -> str:
        return self.model.version


class ModelManager:
    def __init__(
        self,
        build: Callable[[LoadedModel, asyncio.AbstractEventLoop], ModelRuntime],
        repository: Path | None,
        default: str | None,
        drain_timeout_s: float,
        served_name: str | None = None,
    ) -> None:
        """`build` opens, warms up and starts a runtime for a model on the event loop it answers to
        (blocking: it is run off the loop). `served_name` renames the one model served (an
        InferenceService's name, which need not be the name in its config.json)."""
        self.build = build
        self.repository = ModelRepository(repository) if repository is not None else None
        self.entries: dict[str, ModelEntry] = {}
        self.default_name = default
        self.drain_timeout_s = drain_timeout_s
        self.served_name = served_name
        self._locks: dict[str, asyncio.Lock] = {}
        self.load_error: str | None = None  # why the start-up load failed (the server then ends)
        self._loading: asyncio.Task[None] | None = None
        # loads run here: the threads a runtime starts keep this thread's priority (torchrest.priority)
        self._loader = started_pool(1, "load")

    # -- discovery (before the port is bound: a bad folder fails the start) -------------------------
    def add(self, model: LoadedModel, reload: Callable[[], LoadedModel]) -> None:
        if self.served_name is not None:
            if self.entries:
                raise StartupError(f"--model-name names one model, but {self.repository_root} holds several")
            model, reload = _renamed(model, self.served_name), _renaming(reload, self.served_name)
        self.entries[model.name] = ModelEntry(model.name, reload, model)

    @property
    def repository_root(self) -> Path | None:
        return self.repository.root if self.repository is not None else None

    def add_repository(self, only: str | None = None) -> None:
        """Every model folder of the repository, or with `only` that model alone (the others can be
        loaded later through the repository API, as with Triton's explicit model control)."""
        assert self.repository is not None
        for folder in self.repository.folders():
            model = load_model_folder(folder)
            if only is None or only in (model.name, folder.name):
                self.add(model, _folder_loader(folder))
        if only is not None and not self.entries:
            names = ", ".join(folder.name for folder in self.repository.folders())
            raise StartupError(f"--model {only!r} is not in {self.repository.root} (it holds {names})")
        if self.default_name is not None and self.default_name not in self.entries:
            raise StartupError(
                f"--default-model {self.default_name!r} is not in {self.repository.root} ({', '.join(self.entries)})"
            )

    # -- lookup (every request) -----------------------------------------------------------------------
    @property
    def default(self) -> str:
        return self.default_name or next(iter(self.entries))

    def entry(self, name: str | None, version: str | None = None) -> ModelEntry:
        """The named model (default: the default one); 400 for a name or version no model can have, 404 if
        unknown, or if `version` is not served."""
        return look_up(self.entries, name, version, self.default)

    def runtime(self, name: str | None, version: str | None = None) -> ModelRuntime:
        """The runtime that serves a request for `name`; 503 while it is not ready."""
        entry = self.entry(name, version)
        return serving(entry, entry.runtime)

    def not_ready_reason(self) -> str | None:
        """None when every model meant to serve does and all its instances run (for /health)."""
        if self.load_error is not None:
            return self.load_error
        for entry in self.entries.values():
            if entry.state == LOADING and entry.runtime is None:
                return f"model {entry.name} is loading"
            if entry.runtime is not None and (reason := entry.runtime.not_ready_reason()):
                return f"model {entry.name}: {reason}"
        if not any(entry.state == READY for entry in self.entries.values()):
            return "no model is loaded"
        return None

    async def index(self) -> list[dict[str, str]]:
        """The repository index, as `GET /v2/repository/index` gives it."""
        return self.index_now()

    async def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, object]]:
        """Triton's statistics of one model, or of every loaded model (`GET /v2/models/stats`)."""
        entries = [self.entry(name, version)] if name is not None else list(self.entries.values())
        return [e.runtime.stats.as_triton(e.name, e.version) for e in entries if e.runtime is not None]

    async def activity(self) -> dict[str, dict[str, object]]:
        """Each loaded model's recent figures, by name (`GET /web/stats`)."""
        return {e.name: e.runtime.activity() for e in self.entries.values() if e.runtime is not None}

    def index_now(self) -> list[dict[str, str]]:
        if self.repository is not None:
            self._discover()
        return [
            {"name": e.name, "version": e.version, "state": e.state, **({"reason": e.reason} if e.reason else {})}
            for e in self.entries.values()
        ]

    # -- life cycle -----------------------------------------------------------------------------------
    async def load_all(self, after_each: Callable[[], None] = lambda: None) -> bool:
        """Load every model (start-up), calling `after_each` after each; the first failure stops it and is
        kept in `load_error`. True when every model loaded. Each is LOADING until its turn comes, so that the
        server is not ready (/health) before the last of them is."""
        for entry in self.entries.values():
            if entry.runtime is None:
                entry.state, entry.reason = LOADING, ""
        for name in list(self.entries):
            try:
                entry = await self.load(name)
            except LoadFailed as exc:
                self.load_error = exc.message
                after_each()
                return False
            if not entry.model.pretrained:
                log.warning("model %s has RANDOM WEIGHTS: benchmark only", entry.model.name)
            after_each()
        return True

    async def open(self, failed: Callable[[], None]) -> None:
        """One process: load every model once the ports are open (/health says 503 meanwhile); a failure
        ends the server."""

        async def load() -> None:
            if not await self.load_all():
                failed()

        self._loading = asyncio.create_task(load())

    async def close(self) -> None:
        await self.stop()

    def exit_status(self) -> int:
        return 1 if self.load_error else 0

    async def load(self, name: str) -> ModelEntry:
        """Load (or reload) `name`, swap it in, drain what served before. Raises LoadFailed, NotFound."""
        check_model_name(name)
        if name not in self.entries and self.repository is not None:
            self._add_new_folder(name)
        entry = self.entry(name)
        async with self._lock(name):
            loop = asyncio.get_running_loop()
            if entry.runtime is None:
                entry.state, entry.reason = LOADING, ""
            try:
                model = await loop.run_in_executor(self._loader, entry.reload)
                runtime = await loop.run_in_executor(self._loader, self.build, model, loop)
            except Exception as exc:  # noqa: BLE001 - any failure is reported; the others keep serving
                reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                if entry.runtime is None:
                    entry.state, entry.reason = UNAVAILABLE, reason
                log.error("model %s failed to load: %s", name, reason)
                raise LoadFailed(f"failed to load model {name!r}: {reason}") from None
            old = entry.runtime
            entry.model, entry.runtime, entry.state, entry.reason = model, runtime, READY, ""
            log.info("model %s version %s ready (%s)", name, entry.version, runtime.backends[0].name)
        if old is not None:
            await self._drain_and_stop(old)
        return entry

    async def unload(self, name: str) -> None:
        entry = self.entry(name)
        async with self._lock(name):
            old, entry.runtime = entry.runtime, None
            entry.state, entry.reason = UNLOADING, ""
            if old is not None:
                await self._drain_and_stop(old)
            entry.state, entry.reason = UNAVAILABLE, "unloaded"
            log.info("model %s unloaded", name)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for entry in self.entries.values():
            if entry.runtime is not None:
                await loop.run_in_executor(None, entry.runtime.stop)

    async def _drain_and_stop(self, runtime: ModelRuntime) -> None:
        """Wait (up to the drain timeout) until the requests `runtime` admitted are answered; stop it."""
        deadline = asyncio.get_running_loop().time() + self.drain_timeout_s
        while runtime.admission.in_flight > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        await asyncio.get_running_loop().run_in_executor(None, runtime.stop)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _add_new_folder(self, name: str) -> None:
        """A folder that appeared in the repository since start-up: read it (LoadFailed if broken)."""
        assert self.repository is not None
        folder = self.repository.folder(name)
        try:
            model = load_model_folder(folder)
        except ModelLoadError as exc:
            raise LoadFailed(f"failed to load model {name!r}: {exc}") from None
        self.add(model, _folder_loader(folder))

    def _discover(self) -> None:
        """List folders that appeared in the repository since start-up (loaded on request, not before)."""
        assert self.repository is not None
        if self.repository.is_single_model or self.served_name is not None:
            return
        known = {e.model.name for e in self.entries.values()} | set(self.entries)
        try:
            folders = self.repository.folders()
        except ModelLoadError as exc:  # emptied or removed since start-up: what is loaded keeps serving
            log.warning("%s", exc)
            return
        for folder in folders:
            if folder.name in known:
                continue
            try:
                model = load_model_folder(folder)
            except ModelLoadError as exc:
                log.warning("model folder %s is not loadable: %s", folder, exc)
                continue
            self.add(model, _folder_loader(folder))


def _renamed(model: LoadedModel, name: str) -> LoadedModel:
    return dataclasses.replace(model, name=name)


def _renaming(reload: Callable[[], LoadedModel], name: str) -> Callable[[], LoadedModel]:
    return lambda: _renamed(reload(), name)


def _folder_loader(folder: Path) -> Callable[[], LoadedModel]:
    """Reads `folder` again at each load, so a new version written there is picked up."""
    return lambda: load_model_folder(folder)
