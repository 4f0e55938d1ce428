"""A model repository: the folders `torchrest optimize` writes, read back for serving, and the format of
a folder's config.json (ModelConfig: optimize writes it, serving reads it).

<repository>/<model>/config.json    ModelConfig: backend, artifact, precision, task, input spec, labels
<repository>/<model>/labels.txt     class names, one per line (a classifier's; optional for other tasks)
<repository>/<model>/1/model.*      the artifact (.pt2: a torch.export program or an AOTInductor package;
                                    ONNX; legacy TorchScript), uint8 NHWC in, logits out
<repository>/<model>/1/exported.pt2 beside an AOTInductor package: the portable program, served where the
                                    package does not fit (another torch, device or CPU)
<repository>/<model>/report.*       what optimize measured, and why it chose this artifact

Versions: config.json names the artifact ("1/model.onnx"); when a higher-numbered folder beside it holds
a file of the same name ("2/model.onnx"), that one is served, as Triton's "latest" policy has it. A
rollout is: write the new version's folder, then `POST /v2/repository/models/<model>/load`.

A repository may also be one model folder itself (config.json at its top): what KServe's storage
initializer puts at /mnt/models for one InferenceService. It then serves that one model, by the name its
config.json gives.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torchrest.backends import BACKENDS, open_backend
from torchrest.errors import ModelLoadError, NotFound
from torchrest.layout import Layout
from torchrest.model_input import LETTERBOX_FILL, InputSpec, input_size, input_spec
from torchrest.models.common import LoadedModel
from torchrest.models.labels import read_labels
from torchrest.tasks.registry import first_task, tasks_named

log = logging.getLogger("torchrest.models")

CONFIG_FILE = "config.json"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What a model folder's config.json holds: how to load its artifact and how to feed it.

    optimize's artifacts take (N, crop, crop, 3) uint8 and return (N, classes) logits, normalisation inside;
    a folder written by hand may hold a network that takes (N, 3, H, W) float (normalised as `normalize`
    says) and serves any task (`task`: its outputs are checked against it when it loads).
    """

    name: str
    backend: str  # a key of torchrest.backends.BACKENDS (its BackendKind.name)
    artifact: str  # relative to the model folder
    precision: str = "fp32"  # fp32, bf16, fp16, int8
    crop_size: int = 224  # the square input (input_size, when given, says otherwise)
    resize_size: int = 0  # crop: the shorter side before the centre crop (0: 8/7 of the input's side)
    # what it is for (torchrest.tasks): a task's name, or package.module:Class; several, comma-separated, read
    # the outputs in order ("" : the default, classify)
    task: str = ""
    input_size: int | str | list[int] | None = None  # 640, "480x640" or [480, 640]
    resize: str = ""  # crop, letterbox or stretch (default: the first task's)
    normalize: str = (
        ""  # imagenet or unit: what a float network expects ("": the first task's; uint8 artifacts ignore it)
    )
    fill: int = LETTERBOX_FILL
    labels: str = "labels.txt"  # relative to the model folder
    candidate: str = ""  # the optimize candidate that produced it
    batch_sizes: tuple[int, ...] = ()  # the sizes optimize measured
    best_batch_size: int = 0
    threads: int = 0  # the thread budget it was tuned with
    backend_options: dict[str, str] = field(default_factory=dict)
    source: str = ""
    layout: dict[str, int] | None = None  # the serving layout optimize chose (torchrest.layout.Layout)
    objective: str = ""  # what that layout was chosen for: throughput or latency
    # both ends, as optimize measured them: batch-1 ms on the whole budget, a lone request's p50 and img/s
    # in the served layout (its batches kept full)
    measured: dict[str, float] = field(default_factory=dict)
    # what optimize's gate measured for the artifact served, against the fp32 reference (torchrest.optimize.gates):
    # the model's first task's {task, measure, value, bound}, then any other task's
    fidelity: dict[str, Any] = field(default_factory=dict)
    fidelity_other_tasks: list[dict[str, Any]] = field(default_factory=list)
    speedup_vs_eager: float = 0.0  # what it serves, in img/s, over torch eager's (optimize measured both)

    @property
    def input_spec(self) -> InputSpec:
        """ValueError with a one-line reason when the fields do not make one."""
        size = input_size(self.input_size) if self.input_size is not None else (self.crop_size, self.crop_size)
        task = first_task(self.task)
        resize, normalize = self.resize or task.resize, self.normalize or task.normalize
        if refused := task.fit_refused(resize):
            raise ValueError(refused)
        return input_spec(size, self.resize_size, resize, normalize, self.fill)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> ModelConfig:
        """Raises ValueError with a one-line reason for a missing, malformed or incomplete file."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not readable JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object")
        known = {spec.name for spec in fields(cls)}
        missing = [name for name in ("name", "backend", "artifact") if name not in raw]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}")
        try:
            values = {key: value for key, value in raw.items() if key in known}
            values["batch_sizes"] = tuple(values.get("batch_sizes", ()))
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ModelRepository:
    """The one owner of the folder layout: which model folders a repository holds, and which is whose."""

    root: Path

    @property
    def is_single_model(self) -> bool:
        """True when the root is itself a model folder (KServe's single-model mount)."""
        return (self.root / CONFIG_FILE).is_file()

    def folders(self) -> list[Path]:
        """The model folders, by name; ModelLoadError when the root is no folder or holds none."""
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a folder")
        if self.is_single_model:
            return [self.root]
        folders = sorted(folder for folder in self.root.iterdir() if (folder / CONFIG_FILE).is_file())
        for folder in [folder for folder in folders if not self._inside(folder)]:
            log.warning("model folder %s leads outside the repository: not served", folder)
            folders.remove(folder)
        if not folders:
            raise ModelLoadError(f"model repository {self.root} holds no model folder with a {CONFIG_FILE}")
        return folders

    def folder(self, name: str) -> Path:
        """The folder of model `name` (a folder name, never a path); NotFound when there is none."""
        if self.is_single_model:
            raise NotFound(f"unknown model {name!r}: {self.root} is a single model folder")
        if not name or name in (".", "..") or Path(name).name != name or "\0" in name:
            raise NotFound(f"unknown model {name!r}: not a model folder name")
        folder = self.root / name
        if not (folder / CONFIG_FILE).is_file():
            raise NotFound(f"unknown model {name!r}: no folder {folder} with a {CONFIG_FILE}")
        if not self._inside(folder):
            raise NotFound(f"unknown model {name!r}: {folder} leads outside the repository")
        return folder

    def _inside(self, folder: Path) -> bool:
        """A link may point elsewhere: what the folder resolves to must be inside the repository."""
        return folder.resolve().is_relative_to(self.root.resolve())


def load_from_repository(repository: Path, name: str) -> LoadedModel:
    """The model folder called `name`, or the only one there is; ModelLoadError with the reason otherwise."""
    folders = ModelRepository(repository).folders()
    by_name = {folder.name: folder for folder in folders}
    if name in by_name:
        folder = by_name[name]
    elif len(folders) == 1:
        folder = folders[0]
    else:
        raise ModelLoadError(f"model repository {repository} holds {', '.join(by_name)}: pick one with --model NAME")
    return load_model_folder(folder)


def load_model_folder(folder: Path) -> LoadedModel:
    try:
        config = ModelConfig.read(folder / CONFIG_FILE)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    try:
        spec = config.input_spec
    except ValueError as exc:
        raise ModelLoadError(f"{folder / CONFIG_FILE}: {exc}") from None
    tasks = tasks_named(config.task)
    if config.backend not in BACKENDS:
        raise ModelLoadError(f"{folder / CONFIG_FILE}: unknown backend {config.backend!r} ({', '.join(BACKENDS)})")
    for named in (config.artifact, config.labels):
        if not (folder / named).resolve().is_relative_to(folder.resolve()):
            raise ModelLoadError(f"{folder / CONFIG_FILE} names {named}, which is outside the model folder")
    artifact = folder / config.artifact
    if not artifact.is_file():
        raise ModelLoadError(f"{folder / CONFIG_FILE} names artifact {config.artifact}, which is missing")
    try:
        layout = Layout.from_dict(config.layout) if config.layout is not None else None
    except ValueError as exc:
        raise ModelLoadError(f"{folder / CONFIG_FILE}: {exc}") from None
    version, artifact = latest_version(folder, Path(config.artifact))
    options = {
        "precision": config.precision,
        "name": config.candidate or config.backend,
        "normalize": spec.normalize,
        **config.backend_options,
    }
    return LoadedModel(
        name=config.name,
        module=None,
        labels=read_labels(folder / config.labels)
        if (folder / config.labels).is_file() or tasks[0].labels_required
        else [],
        input_spec=spec,
        pretrained=True,
        source=str(artifact),
        metadata={
            "backend": config.backend,
            "precision": config.precision,
            "candidate": config.candidate,
            "version": version,
        },
        opener=lambda device, threads, instances: open_backend(
            config.backend, artifact, device=device, threads=threads, options=options | {"streams": str(instances)}
        ),
        layout=layout,
        for_tasks=tasks,
        narrow=BACKENDS[config.backend].narrow,
    )


def latest_version(folder: Path, artifact: Path) -> tuple[str, Path]:
    """The highest-numbered version folder holding the artifact's file name, and that file."""
    if len(artifact.parts) != 2 or not artifact.parts[0].isdigit():
        return "1", folder / artifact
    versions = [int(v.name) for v in folder.iterdir() if v.name.isdigit() and (v / artifact.name).is_file()]
    latest = max(versions, default=int(artifact.parts[0]))
    return str(latest), folder / str(latest) / artifact.name


__all__ = ["CONFIG_FILE", "ModelConfig", "ModelRepository", "load_from_repository", "load_model_folder"]
