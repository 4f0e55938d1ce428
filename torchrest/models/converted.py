"""A built-in model served fast out of the box: converted once to the fastest backend known to give its
answers on this kind of machine, and cached, so that `torchrest serve` needs no `optimize` first.

    built-in model (torch, fp32) --first start: torch.export -> ONNX (dynamo exporter), cached-->
        OpenVINO fp32 on a CPU (every start: read the cached file, compile)

Known faithful: fp32 end to end (OpenVINO's precision hint pinned to f32, so no bf16 on AMX machines),
and in optimize's runs on EfficientNet-Lite0 and ResNet-18 its top-1 agreement with torch eager was 100%
with probabilities within 1e-5. On a GPU the model stays in torch (fp16 there), and `--backend eager`
keeps torch anywhere: the reference. A user's own model file is served as it is: `torchrest optimize`
is where it earns a faster form, with the fidelity check that makes it safe.

The cache is the folders the config names, in order (ServerConfig.cache_folders: `--cache-dir`, then
`$XDG_CACHE_HOME/torchrest`, i.e. `~/.cache/torchrest`), passed down from the config (torchrest.engine.build):
read from the first that holds the file, written to the first that can be written; where none can (a
read-only container), a temporary folder serves for this run, and the log says so. The container image
carries the default model's converted form, made when the image is built (`convert`, below).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from torchrest.backends import Backend, TorchBackend, open_backend
from torchrest.backends.openvino_backend import KIND as OPENVINO
from torchrest.errors import first_line
from torchrest.export import export_program, to_onnx
from torchrest.models.common import LoadedModel

log = logging.getLogger("torchrest.models")

AUTO, EAGER = "auto", "eager"
BACKENDS = (AUTO, EAGER)
OUTPUT_NAMES = ["logits", "features"]  # a built-in model's outputs (models.registry.LogitsAndFeatures)
FORMAT_VERSION = "2"  # bump when the conversion changes: old cache entries are then not read (2: + features)


def served_as(model: LoadedModel, backend: str, device: str, cache_folders: Sequence[Path]) -> LoadedModel:
    """`model`, with an opener for its fast form where `backend` is auto and one is known for it here (its
    converted form looked for in `cache_folders`, in order, and made in the first that can be written)."""
    if backend != AUTO or device != "cpu" or model.module is None or model.opener is not None:
        return model
    if "format" in model.metadata:  # a user's model file
        return model
    if reason := OPENVINO.missing():
        log.info("model %s stays in torch eager: %s", model.name, reason)
        return model
    model.opener = Converted(model, cache_folders).open
    model.metadata["served_as"] = "openvino-fp32, converted from torch at start-up (--backend eager: torch)"
    return model


class Converted:
    """The model's ONNX form, made on first use (or found in the cache), opened by OpenVINO per instance."""

    def __init__(self, model: LoadedModel, cache_folders: Sequence[Path]) -> None:
        self.model = model
        self.cache_folders = tuple(cache_folders)
        self._path: Path | None = None
        self._lock = threading.Lock()

    def open(self, device: str, threads: int, instances: int) -> Backend:
        try:
            path = self.path()
        except Exception as exc:  # noqa: BLE001 - whatever the exporter raises, torch eager still serves
            log.warning("model %s: conversion failed (%s); serving torch eager", self.model.name, first_line(exc))
            assert self.model.module is not None
            return TorchBackend(self.model.module, device=device, threads=threads)
        options = {"name": "openvino-fp32", "inference_precision": "fp32", "streams": str(instances)}
        return open_backend(OPENVINO.name, path, device=device, threads=threads, options=options)

    def path(self) -> Path:
        with self._lock:
            if self._path is None or not self._path.is_file():
                self._path = self._convert()
            return self._path

    def _convert(self) -> Path:
        model = self.model
        name = f"{model.name}-{self._key()}.onnx"
        for folder in self.cache_folders:
            if (folder / name).is_file():
                log.info("model %s: the converted form from %s", model.name, folder / name)
                return folder / name
        path = writable_cache_folder(self.cache_folders) / name
        started = time.perf_counter()
        assert model.module is not None
        example = torch.zeros((2, *model.input_spec.size, 3), dtype=torch.uint8)
        staged = path.with_suffix(f".{os.getpid()}.tmp")
        to_onnx(export_program(model.module, example), example, staged, outputs=OUTPUT_NAMES)
        staged.replace(path)  # whole, or not at all: another process may be reading the cache
        log.info(
            "model %s converted for OpenVINO in %.1f s, cached at %s", model.name, time.perf_counter() - started, path
        )
        return path

    def _key(self) -> str:
        """What the converted file depends on: the model, its weights file, the crop, torch's exporter."""
        model = self.model
        source = Path(model.source)
        stamp = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else model.source
        parts = [FORMAT_VERSION, model.name, stamp, str(model.input_spec.crop_size), torch.__version__]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def convert(name: str, cache_dir: Path) -> Path:
    """Convert built-in model `name` into `cache_dir` now (the container image does this when it is built, for
    its `--cache-dir`, a folder it then reads only)."""
    from torchrest.config import ModelSource
    from torchrest.models.registry import load_model

    return Converted(load_model(ModelSource(name)), [cache_dir]).path()


def writable_cache_folder(cache_folders: Sequence[Path]) -> Path:
    """The first of `cache_folders` this process can write to, else a temporary one for this run."""
    for folder in cache_folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=folder)  # writable, not only present
            probe.close()
            return folder
        except OSError:
            continue
    temporary = Path(tempfile.mkdtemp(prefix="torchrest-cache-"))
    tried = ", ".join(str(folder) for folder in cache_folders)
    log.warning("no writable cache folder (%s): converting into %s for this run", tried, temporary)
    return temporary
