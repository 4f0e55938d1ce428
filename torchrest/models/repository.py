"""A model repository: the folders `torchrest optimize` writes, read back for serving.

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

import logging
from dataclasses import dataclass
from pathlib import Path

from torchrest.backends import BACKENDS, open_backend
from torchrest.config import ModelConfig
from torchrest.errors import ModelLoadError, NotFound
from torchrest.layout import Layout
from torchrest.models.common import LoadedModel
from torchrest.models.labels import read_labels
from torchrest.tasks import CLASSIFY, task_names

log = logging.getLogger("torchrest.models")

CONFIG_FILE = "config.json"


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
    tasks = task_names(config.task)
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
        if (folder / config.labels).is_file() or tasks[0] == CLASSIFY
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
        tasks=tasks,
        narrow=BACKENDS[config.backend].narrow,
    )


def latest_version(folder: Path, artifact: Path) -> tuple[str, Path]:
    """The highest-numbered version folder holding the artifact's file name, and that file."""
    if len(artifact.parts) != 2 or not artifact.parts[0].isdigit():
        return "1", folder / artifact
    versions = [int(v.name) for v in folder.iterdir() if v.name.isdigit() and (v / artifact.name).is_file()]
    latest = max(versions, default=int(artifact.parts[0]))
    return str(latest), folder / str(latest) / artifact.name


__all__ = ["CONFIG_FILE", "ModelRepository", "load_from_repository", "load_model_folder"]
