"""Model name or model file -> a `LoadedModel` whose backends take uint8 NHWC batches.

A model file is read by what it holds (torchrest.backends.formats): a torch.export program (`.pt2`, the
format to bring), an AOTInductor package, ONNX, or legacy TorchScript. A user's network takes float NCHW,
normalised as --normalize says (the uint8 stem is put in front of it); a program whose input is already
(N, H, W, 3) uint8 is served as it is. Every model is run once on a black image as it loads: its outputs
must fit its tasks (--task), or the load fails in one line naming what was expected and what was found.

Adding a built-in model is one builder function here and its architecture in a module beside this one.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchrest.backends import BACKENDS, Backend, open_backend
from torchrest.backends.aoti_backend import KIND as AOTI_KIND
from torchrest.backends.formats import AOTI, EXPORTED, TORCHSCRIPT, TORCHSCRIPT_DEPRECATED, file_format
from torchrest.backends.inputs import FLOAT_NCHW, Uint8Network, as_outputs
from torchrest.backends.ort_backend import KIND as ONNXRUNTIME_KIND
from torchrest.backends.torch_backend import eval_mode, load_exported, load_torchscript
from torchrest.config import ModelSource
from torchrest.errors import ModelLoadError, first_line
from torchrest.model_input import InputSpec
from torchrest.models.common import LoadedModel
from torchrest.models.efficientnet_lite import efficientnet_lite0, published_lite0_weights
from torchrest.models.labels import imagenet_labels, read_labels
from torchrest.models.resnet import resnet18
from torchrest.tasks import Task
from torchrest.tasks.registry import Heads, OutputShape, output_shapes, tasks_named

log = logging.getLogger("torchrest.models")
DEFAULT_MODEL = "efficientnet_lite0"
MODEL_FILE_SUFFIXES = {".pt2", ".onnx", ".pt", ".pth", ".ts", ".torchscript"}

# name -> (architecture builder, default weights file or None, input spec)
Builder = Callable[[int], nn.Module]
BUILTIN: dict[str, tuple[Builder, Callable[[], str | None], InputSpec]] = {
    "efficientnet_lite0": (efficientnet_lite0, published_lite0_weights, InputSpec(224, 256)),
    "resnet18": (resnet18, lambda: None, InputSpec(224, 256)),
}
BUILTIN_TASKS = "classify,embed"  # the built-in networks' outputs: the logits, and the features they are read from


def load_model(config: ModelSource, device: str = "cpu") -> LoadedModel:
    """Build the built-in model or read the model file `config` names, its outputs checked against its tasks
    on `device` (where it will run: a compiled package runs nowhere else); raises ModelLoadError with a
    one-line reason on any failure. (Model folders of a repository are `models.repository`'s.)"""
    name = config.model or DEFAULT_MODEL
    path = Path(name)
    tasks = tasks_named(config.task)  # UnknownTask (a ModelLoadError) when one cannot be had
    if config.labels:
        labels = read_labels(config.labels)
    else:  # ImageNet's classes for a classifier; a detector's or segmenter's are class_0, class_1, ...
        labels = list(imagenet_labels()) if name in BUILTIN or tasks[0].imagenet_labels else []
    if name in BUILTIN:
        builtin = tasks_named(BUILTIN_TASKS)
        if tasks not in (builtin[:1], builtin):
            raise ModelLoadError(f"{name} serves {BUILTIN_TASKS} (in that order); --task is for a model file")
        model = _load_builtin(name, config.weights, labels)
    elif path.suffix in MODEL_FILE_SUFFIXES or path.exists():
        try:
            spec = config.input_spec
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        model = _load_file(path, labels, spec, tasks)
    else:
        names = ", ".join(sorted(BUILTIN))
        raise ModelLoadError(f"unknown model {name!r}: choose one of {names}, or a model file (.pt2, .onnx)")
    if model.module is not None:
        eval_mode(model.module)
    model.heads = Heads.bind(model.for_tasks, probe(model, device), model.input_spec.size)
    return model


def probe(model: LoadedModel, device: str) -> tuple[OutputShape, ...]:
    """What the model outputs for one image: one run of a black image (its torch module in eager on the CPU,
    or one instance of its backend on one thread on `device`, closed afterwards)."""
    black = np.zeros((1, *model.input_spec.size, 3), np.uint8)
    try:
        if model.module is not None:
            with torch.inference_mode():
                return output_shapes(as_outputs(model.module(torch.from_numpy(black))))
        backend = model.open_backend(device, 1, 1)
        backend.prepare_thread()
        shapes = output_shapes(backend.run(black))
        del backend  # its session or container goes now, not with the process
        return shapes
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot run one image cannot be served
        raise ModelLoadError(f"{model.name} fails on one image: {type(exc).__name__}: {first_line(exc)}") from None


def _load_file(path: Path, labels: list[str], spec: InputSpec, tasks: tuple[Task, ...]) -> LoadedModel:
    form = file_format(path)
    metadata: dict[str, object] = {"format": form}
    module: nn.Module | None = None
    opener = None
    kind = ""
    if form == EXPORTED:
        module, batch, size = load_exported(path, spec.normalize)
        if all(size) and size != spec.size:
            wanted = str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"
            raise ModelLoadError(f"{path} takes {size[0]}x{size[1]} images: serve it with --input-size {wanted}")
        if batch:
            metadata["batch"] = batch  # exported without a dynamic batch dimension: run in chunks of it
    elif form == TORCHSCRIPT:
        module = Uint8Network(load_torchscript(path), spec.normalize)
        metadata["deprecated"] = TORCHSCRIPT_DEPRECATED
    else:  # compiled or ONNX: served by its backend as it is (optimize starts from a torch model)
        kind = AOTI_KIND.name if form == AOTI else ONNXRUNTIME_KIND.name
        height, width = spec.size
        options = {"name": kind, "input": f"{height}x{width}", "pixels": FLOAT_NCHW, "normalize": spec.normalize}

        def opener(device: str, threads: int, instances: int) -> Backend:
            return open_backend(kind, path, device=device, threads=threads, options=options)

    return LoadedModel(
        name=path.stem,
        module=module,
        labels=labels,
        input_spec=spec,
        pretrained=True,
        source=str(path),
        metadata=metadata,
        opener=opener,
        for_tasks=tasks,
        narrow=bool(kind) and BACKENDS[kind].narrow,
    )


class LogitsAndFeatures(nn.Module):
    """A built-in classifier that also gives the pooled features its classifier reads: (logits, features),
    so that one model call answers both /classify and /embed."""

    def __init__(self, network: Any) -> None:  # an architecture of models/ with features() and head()
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.network.features(x)
        return self.network.head(features), features


def _load_builtin(name: str, weights: Path | None, labels: list[str]) -> LoadedModel:
    builder, default_weights, spec = BUILTIN[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)  # without weights, every process builds the same random model
        network = builder(len(labels))
    weights_file = str(weights) if weights else default_weights()
    if weights_file:
        state = _read_state_dict(Path(weights_file))
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(f"weights {weights_file} do not fit {name}: {first_line(exc)}") from None
        source = weights_file
    else:
        source = "random initialisation (seed 0)"
        log.warning(
            "MODEL %s HAS NO PRETRAINED WEIGHTS: running random-initialised, its answers are "
            "meaningless; use it for benchmarks only, or pass --weights FILE",
            name,
        )
    return LoadedModel(
        name=name,
        module=Uint8Network(LogitsAndFeatures(network)),
        labels=labels,
        input_spec=spec,
        pretrained=bool(weights_file),
        source=source,
        for_tasks=tasks_named(BUILTIN_TASKS),
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ModelLoadError(f"weights file {path} is not a PyTorch state dict: {first_line(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state
