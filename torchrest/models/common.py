"""The loaded-model record every model source gives: a built-in, a model file, a repository's folder.

A model's forward takes the batch exactly as the batcher builds it, (N, H, W, 3) uint8, and does its own
normalisation (the stem, backends.inputs.Uint8Network), so pre-processing stays model-agnostic and the
batch crosses to the device as bytes. What it is for (its tasks) decides how its outputs are read: its
`heads`, bound to its outputs' shapes when they are first seen (a probe at load, or the first warm-up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from torchrest.backends import Backend, TorchBackend
from torchrest.layout import Layout
from torchrest.model_input import InputSpec
from torchrest.tasks import Task
from torchrest.tasks.registry import Heads, tasks_named


@dataclass(slots=True)
class LoadedModel:
    """A model ready for a backend: how to open one, plus what the API needs to describe it.

    Built-in models and torch model files (exported programs, legacy TorchScript) carry their uint8-input
    torch `module` (optimize starts from it); a model folder from a repository, an AOTInductor package or
    an ONNX file carries an `opener` for its artifact instead.
    """

    name: str
    module: nn.Module | None
    labels: list[str]
    input_spec: InputSpec
    pretrained: bool
    source: str
    metadata: dict[str, object] = field(default_factory=dict)
    opener: Callable[[str, int, int], Backend] | None = None  # (device, threads, instances) -> Backend
    layout: Layout | None = None  # the serving layout optimize measured best (config.json), if any
    # what it is for (torchrest.tasks); the first is what a request naming none asks
    for_tasks: tuple[Task, ...] = field(default_factory=lambda: tasks_named(""))
    heads: Heads | None = None  # its tasks bound to its outputs, once their shapes are known
    narrow: bool = False  # without a layout, one instance per core serves it best (its backend's BackendKind)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Its tasks' names, its own first."""
        return tuple(task.name for task in self.for_tasks)

    @property
    def version(self) -> str:
        """The version served (a repository's version folder; 1 for built-in models and model files)."""
        return str(self.metadata.get("version", "1"))

    def open_backend(self, device: str, threads: int, instances: int = 1) -> Backend:
        """One instance of this model on `device`, pinned to `threads` intra-op threads."""
        if self.opener is not None:
            return self.opener(device, threads, instances)
        assert self.module is not None, "a LoadedModel has a module or an opener"
        name = "torchscript" if self.metadata.get("format") == "torchscript" else "torch_eager"
        batch = int(self.metadata.get("batch", 0))  # type: ignore[call-overload]
        return TorchBackend(self.module, device=device, threads=threads, name=name, batch=batch)

    def describe(self) -> dict[str, object]:
        spec = self.input_spec
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "pretrained": self.pretrained,
            "source": self.source,
            "classes": len(self.labels),
            "input": {
                "crop_size": spec.crop_size,
                "resize_size": spec.resize_size,
                "height": spec.size[0],
                "width": spec.size[1],
                "resize": spec.resize,
                "normalize": spec.normalize,
            },
            **({"outputs": self.heads.describe()} if self.heads is not None else {}),
            **self.metadata,
        }
