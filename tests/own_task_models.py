"""Models known by construction for the tests of tasks of one's own (tests/test_own_task.py, the page's in
tests/test_web.py), and a task that breaks where asked:

    Brightness   (N, 3, H, W) pixels / 255 -> (N, 1, H / 2, W / 2) depth = 1 + brightness (examples/tasks/depth.py)
    CentredBox   obb, end-to-end (N, 8, 7): one box in the middle of the input
    Fragile      the depth task, failing in its batched step (?fail=batch) or its answer (?fail=answer)
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from examples.tasks.depth import Depth, DepthHead
from tests.task_models import export
from torchrest.tasks import Answer, Decoded, OutputShape, Rows

ROOT = Path(__file__).parent.parent  # where `examples` imports from (PYTHONPATH for a server)
DEPTH = "examples.tasks.depth:Depth"
SIZE = 64  # the model's square input; its depth map is 32 x 32


class Brightness(nn.Module):
    """(N, 3, H, W) pixels / 255 -> (N, 1, H / 2, W / 2) depth: 1 + the mean brightness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1 + nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 2)


class CentredBox(nn.Module):
    """An obb model known by construction, end-to-end (N, 8, 7): one box in the middle of the input, half its
    width and a quarter of its height, turned 0.5 rad, class 1, scored by the image's mean brightness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = float(SIZE)
        rows = torch.zeros(8, 7)
        rows[0] = torch.tensor([side / 2, side / 2, side / 2, side / 4, 0.0, 1.0, 0.5])
        score = torch.zeros(8, 7)
        score[0, 4] = 1.0
        return rows + x.mean(dim=(1, 2, 3))[:, None, None] * score


class FragileHead(DepthHead):
    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[str]) -> list[Decoded]:
        if "batch" in options:
            raise RuntimeError("the batch step broke")
        return super().decode(outputs, rows, [False] * len(options))


class Fragile(Depth):
    """Depth that breaks where asked: ?fail=batch in its batched step, ?fail=answer in its answer."""

    name = "fragile-depth"

    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[DepthHead, int]:
        head, used = super().bind(outputs, first, input_size)
        return FragileHead(head.output, head.input_size), used

    def options(self, parameters: Mapping[str, object]) -> str:  # type: ignore[override]
        return str(parameters.get("fail", ""))

    def http_body(  # type: ignore[override]
        self, answer: Answer, options: str, head: DepthHead, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        if options == "answer":
            raise ValueError("the answer step broke")
        return super().http_body(answer, False, head, labels, model, accept)


def half_black_half_white() -> bytes:
    """A 200 x 100 PNG: black on its left half, white on its right (letterboxed into 64 x 64: rows 16-47)."""
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, 100:] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_repository(root: Path) -> Path:
    """Two model folders of the same network: `depth` (the example's task) and `fragile` (this module's); and
    `rotated`, a model for obb, a task added to torchrest as one module and one entry point."""
    models = (("depth", DEPTH, Brightness()), ("fragile", "tests.own_task_models:Fragile", Brightness()))
    for name, task, network in (*models, ("rotated", "obb", CentredBox())):
        folder = root / name
        (folder / "1").mkdir(parents=True)
        export(network, (SIZE, SIZE), folder / "1" / "model.pt2")
        config = {"name": name, "backend": "torch", "artifact": "1/model.pt2", "task": task, "normalize": "unit"}
        config |= {"input_size": SIZE, "layout": {"instances": 1, "threads": 1, "max_batch_size": 4}}
        (folder / "config.json").write_text(json.dumps(config) + "\n")
    return root
