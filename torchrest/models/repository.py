"""A model repository: the folders `torchrest optimize` writes, read back for serving.

<repository>/<model>/config.json    ModelConfig: backend, artifact, precision, input spec, labels
<repository>/<model>/labels.txt     class names, one per line
<repository>/<model>/1/model.*      the artifact (ONNX, TorchScript), uint8 NHWC in, logits out
<repository>/<model>/report.*       what optimize measured, and why it chose this artifact

Versions: config.json names the artifact ("1/model.onnx"); when a higher-numbered folder beside it holds
a file of the same name ("2/model.onnx"), that one is served, as Triton's "latest" policy has it. A
rollout is: write the new version's folder, then `POST /v2/repository/models/<model>/load`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torchrest.backends import BACKENDS, open_backend
from torchrest.config import ModelConfig
from torchrest.errors import StartupError
from torchrest.models.common import LoadedModel
from torchrest.models.labels import read_labels

log = logging.getLogger("torchrest.models")

CONFIG_FILE = "config.json"


def model_folders(repository: Path) -> list[Path]:
    """The folders of `repository` that hold a config.json, by name."""
    if not repository.is_dir():
        raise StartupError(f"model repository {repository} is not a folder")
    return sorted(folder for folder in repository.iterdir() if (folder / CONFIG_FILE).is_file())


def load_from_repository(repository: Path, name: str) -> LoadedModel:
    """The model folder called `name`, or the only one there is; StartupError with the reason otherwise."""
    folders = model_folders(repository)
    if not folders:
        raise StartupError(f"model repository {repository} holds no model folder with a {CONFIG_FILE}")
    by_name = {folder.name: folder for folder in folders}
    if name in by_name:
        folder = by_name[name]
    elif len(folders) == 1:
        folder = folders[0]
    else:
        raise StartupError(f"model repository {repository} holds {', '.join(by_name)}: pick one with --model NAME")
    return load_model_folder(folder)


def load_model_folder(folder: Path) -> LoadedModel:
    try:
        config = ModelConfig.read(folder / CONFIG_FILE)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if config.backend not in BACKENDS:
        raise StartupError(f"{folder / CONFIG_FILE}: unknown backend {config.backend!r} ({', '.join(BACKENDS)})")
    artifact = folder / config.artifact
    if not artifact.is_file():
        raise StartupError(f"{folder / CONFIG_FILE} names artifact {config.artifact}, which is missing")
    version, artifact = latest_version(folder, Path(config.artifact))
    options = {"precision": config.precision, "name": config.candidate or config.backend, **config.backend_options}
    return LoadedModel(
        name=config.name,
        module=None,
        labels=read_labels(folder / config.labels),
        input_spec=config.input_spec,
        pretrained=True,
        source=str(artifact),
        metadata={
            "backend": config.backend,
            "precision": config.precision,
            "candidate": config.candidate,
            "version": version,
        },
        opener=lambda device, threads: open_backend(
            config.backend, artifact, device=device, threads=threads, options=options
        ),
    )


def latest_version(folder: Path, artifact: Path) -> tuple[str, Path]:
    """The highest-numbered version folder holding the artifact's file name, and that file."""
    if len(artifact.parts) != 2 or not artifact.parts[0].isdigit():
        return "1", folder / artifact
    versions = [int(v.name) for v in folder.iterdir() if v.name.isdigit() and (v / artifact.name).is_file()]
    latest = max(versions, default=int(artifact.parts[0]))
    return str(latest), folder / str(latest) / artifact.name


__all__ = ["CONFIG_FILE", "load_from_repository", "load_model_folder", "model_folders"]
