"""Model names, versions and states: what a name from a URL may be before it reaches the filesystem, and
the states the repository index reports (Triton's words). Both the front-ends and the engine use them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from torchrest.errors import BadRequest, NotFound, NotReady

MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
VERSION = re.compile(r"[0-9]{1,18}")


class ModelState(StrEnum):
    """A model's state, as the repository index reports it (Triton's words)."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


READY, LOADING, UNLOADING, UNAVAILABLE = ModelState


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


class Served(Protocol):
    """A model entry as the look-up reads it: the engine's ModelEntry, or a front-end's view of it."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def runtime(self) -> Any: ...
    @property
    def version(self) -> str: ...


Entry = TypeVar("Entry", bound=Served)


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


def serving_runtime(entry: Served) -> Any:
    """The runtime that serves requests for `entry`; 503 while it is not ready."""
    if entry.runtime is None or entry.state != READY:
        raise NotReady(f"model {entry.name!r} is {entry.state.lower()}{': ' + entry.reason if entry.reason else ''}")
    return entry.runtime
