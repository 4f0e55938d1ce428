"""Making the portable forms of a torch model, once, for whoever needs them (optimize's candidates, the
default model's start-up conversion):

    nn.Module (uint8 NHWC in) --torch.export, dynamic batch--> ExportedProgram (.pt2)
    ExportedProgram --torch.onnx.export(dynamo=True)--> ONNX (opset 18, one file)

Exporters warn at length about things that are fine here and print whole graphs from C++ when an operator
is missing (the exception that follows already says which): `quiet()` mutes both while they work, and
`export_failure` keeps the line of the ONNX exporter's long message that says what failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrest.errors import first_line

ONNX_OPSET = 18
MAX_BATCH = 1024  # the exported programs' dynamic batch dimension: 1 to this
ONNX_NAMES: dict[str, Any] = {"input_names": ["pixels"], "opset_version": ONNX_OPSET}


def export_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`module` exported with a dynamic batch dimension (1 to MAX_BATCH); `example` has a batch of 2."""
    batch = torch.export.Dim("batch", max=MAX_BATCH)
    with torch.no_grad(), quiet():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def to_onnx(
    program: torch.export.ExportedProgram, example: torch.Tensor, path: Path, outputs: list[str] | None = None
) -> Path:
    """The program as one ONNX file (weights inside: quantization tools copy the file alone), its batch
    dimension dynamic, by the dynamo exporter; its outputs named `outputs` (default: one, "logits")."""
    names = {**ONNX_NAMES, "output_names": outputs or ["logits"]}
    with torch.no_grad(), quiet():
        torch.onnx.export(program, (example,), str(path), dynamo=True, optimize=True, external_data=False, **names)
    return path


def export_failure(exc: Exception) -> str:
    """The line of the dynamo exporter's long message that says what failed (an operator it has no
    ONNX function for), without its colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    summary = re.search(r"## Exception summary\s+<class '[^']+'>: ([^\n]+)", text)
    return summary.group(1) if summary else first_line(exc)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Both output descriptors muted, and warnings ignored, while an exporter or quantizer works."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fd in saved:
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy_fd in saved.items():
            os.dup2(copy_fd, fd)
            os.close(copy_fd)
