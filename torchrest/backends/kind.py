"""What a backend module declares for the rest of the package: how model folders name it, how to open its
artifact, and how the Open Inference Protocol and KServe name what it runs. The registry
(`backends/__init__.py`), /v2 metadata, optimize and the KServe runtime's formats all read this."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BackendKind:
    name: str  # config.json's "backend"
    open: Callable[..., Any]  # (artifact path, *, device, threads, options) -> a Backend
    platform: str  # the platform /v2 model metadata reports (Triton's names)
    model_format: str  # KServe's modelFormat name for its artifacts
    packages: tuple[str, ...]  # what must be importable for it to run
    # a model it runs is served as one instance per core (up to MAX_NARROW) unless a layout says otherwise:
    # measured where its one wide instance answers less under load (docs/benchmarks.md, "Layouts")
    narrow: bool = False

    def missing(self) -> str | None:
        """None when it can run here, else which package is not installed."""
        return missing_package(*self.packages)


def missing_package(*names: str) -> str | None:
    """None when every package can be imported, else which is not installed (without importing it)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed"
    return None
