"""What the handlers (HTTP, gRPC, the web page) may ask of the models they serve, declared once:

    handler -> ServedModels.entry(name) / .runtime(name) -> ServedRuntime: admit, infer, observe_total
            -> ServedModels.statistics / .activity / .index / .load / .unload

Two things satisfy it, and mypy checks both: the engine's `ModelManager` (in one process) and a front-end's
`RemoteModels` (the engine's models seen through its link). The handlers import this module, never
torchrest.engine. Also here: what a model name and version may be before they reach the filesystem, and the
states the repository index reports (Triton's words).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

import numpy as np

from torchrest.errors import BadRequest, NotFound, NotReady
from torchrest.model_input import InputSpec
from torchrest.tasks import Task
from torchrest.tasks.registry import Answer, Heads, installed_tasks
from torchrest.timing import StageTimes

MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
VERSION = re.compile(r"[0-9]{1,18}")


class ModelState(StrEnum):
    """A model's state, as the repository index reports it (Triton's words)."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


READY, LOADING, UNLOADING, UNAVAILABLE = ModelState


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """How a model is served now: the same fields whether it runs in this process or in the engine."""

    backend: str
    device: str
    max_batch_size: int
    instances: int
    threads: int


class ServedModel(Protocol):
    """A model as the handlers describe and feed it: the engine's LoadedModel, or a front-end's ModelInfo."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def input_spec(self) -> InputSpec: ...
    @property
    def metadata(self) -> Mapping[str, object]: ...
    @property
    def tasks(self) -> tuple[str, ...]:
        """What it is for: the first is what a request that names no task asks of it."""
        ...

    @property
    def heads(self) -> Heads | None:
        """Its tasks bound to its outputs (None until it has been loaded once)."""
        ...

    def describe(self) -> dict[str, object]: ...


class ServedRuntime(Protocol):
    """A model that serves requests: its admission bound (torchrest.admission), and its answers."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> ServedModel: ...
    @property
    def info(self) -> RuntimeInfo: ...
    def admit(self, count: int = 1, deadline_s: float | None = None) -> None: ...
    def release(self, count: int = 1) -> None: ...
    def infer(
        self,
        image: bytes | np.ndarray,
        deadline_s: float,
        request_id: str,
        times: StageTimes | None = None,
        task: str = "",
        options: object = None,
    ) -> Awaitable[Answer]:
        """One image's answer to `task` (default: the model's own) with its options, or its error; cancelling
        the wait drops the image before the model."""
        ...

    def observe_total(self, seconds: float) -> None:
        """A request's whole time, for the latency histogram and the web page's figures."""


class ServedEntry(Protocol):
    """A model the server knows, loaded or not (the repository index's row)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def model(self) -> ServedModel: ...
    @property
    def runtime(self) -> ServedRuntime | None: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...


class ServedModels(Protocol):
    """Every model a server holds: look-up, readiness, the repository API and the figures the handlers show."""

    @property
    def entries(self) -> Mapping[str, ServedEntry]: ...
    @property
    def default(self) -> str: ...
    def entry(self, name: str | None, version: str | None = None) -> ServedEntry:
        """The named model (default: the default one); 400 for a name or version no model can have, 404 if
        unknown, or if `version` is not served."""
        ...

    def runtime(self, name: str | None, version: str | None = None) -> ServedRuntime:
        """The runtime that serves requests for `name`; 503 while it is not ready."""
        ...

    def not_ready_reason(self) -> str | None:
        """None when the server is ready (/health, /v2/health/ready, gRPC health), else why not."""
        ...

    async def index(self) -> list[dict[str, str]]: ...
    async def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, object]]: ...
    async def activity(self) -> dict[str, dict[str, object]]: ...
    async def load(self, name: str) -> ServedEntry: ...
    async def unload(self, name: str) -> None: ...


class HostedModels(ServedModels, Protocol):
    """The models as the listeners open and close them around serving (torchrest.frontend.listeners)."""

    async def open(self, failed: Callable[[], None]) -> None:
        """Start serving: load the models (one process) or reach the engine (a front-end). `failed` ends
        the server when the models cannot serve at all."""
        ...

    async def close(self) -> None:
        """After the listeners have drained: stop the models (or the link to them)."""
        ...

    def exit_status(self) -> int:
        """The server's exit status once it has stopped: 0, or 1 when the models failed to load."""
        ...


def check_model_name(name: str) -> None:
    """Names from URLs never reach the filesystem unchecked: letters, digits, '_', '-' and '.', not
    starting with '.' or '-', at most 128 characters (so no '..', no slash, encoded or not, no NUL)."""
    if not MODEL_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid model name {shown(name)}: use letters, digits, '_', '-' and '.', not starting "
            "with '.' or '-', at most 128 characters"
        )


def shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


Entry = TypeVar("Entry", bound=ServedEntry)


def look_up(entries: Mapping[str, Entry], name: str | None, version: str | None, default: str) -> Entry:
    """The named model (default: `default`); 400 for a name or version no model can have, 404 if unknown,
    or if `version` is not the one served."""
    if name is not None:
        check_model_name(name)
    if version is not None and not VERSION.fullmatch(version):
        raise BadRequest(f"invalid model version {shown(version)}: a version is a number")
    key = name if name is not None else default
    entry = entries.get(key)
    if entry is None:
        raise NotFound(f"unknown model {key!r}; served: {', '.join(entries)}")
    if version is not None and version != entry.version:
        raise NotFound(f"model {key!r} has no version {version!r} loaded (it serves version {entry.version})")
    return entry


Runtime = TypeVar("Runtime", bound=ServedRuntime)


def serving(entry: ServedEntry, runtime: Runtime | None) -> Runtime:
    """`runtime`, the entry's, when it serves requests; 503 while it is not ready."""
    if runtime is None or entry.state != READY:
        raise NotReady(f"model {entry.name!r} is {entry.state.lower()}{': ' + entry.reason if entry.reason else ''}")
    return runtime


def tasks_by_route(models: ServedModels) -> dict[str, Task]:
    """Every task a route answers for, by its route: those installed, then those the models served bring
    (a task of one's own, `--task package.module:Class`), once their outputs are bound."""
    tasks = {task.route: task for task in installed_tasks()}
    for entry in models.entries.values():
        heads = entry.model.heads
        for task in heads.tasks_by_name.values() if heads is not None else ():
            tasks.setdefault(task.route, task)
    return tasks
