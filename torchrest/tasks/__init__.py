"""What a model is for, one module per task, each whole in itself: the outputs it accepts, its default fitting
and normalisation, its request options, its batched step (engine side), its answer as JSON, Open
Inference Protocol tensors or a PNG in the original image's pixels (front-end side), its OpenAPI
description, its view on the web page and its fidelity gate. Everything else asks the task; nothing
else names one.

    classify   (N, classes) logits                       -> probabilities, the top k         crop
    embed      (N, D) features                           -> the vector                       crop
    detect     (N, 4 + C, A) dense, or post-NMS boxes    -> boxes in the original's pixels   letterbox
    segment    (N, C, h, w) class scores                 -> a class per original pixel       letterbox
    obb        (N, 4 + C + 1, A) or (N, K, 7)            -> rotated boxes in the original's  letterbox

The built-ins are registered as entry points (group `torchrest.tasks`), as a package's own are; a task of
one's own is also named by its import path (`--task package.module:Class`). This package is the public
interface such a task is written against (docs/tasks.md, "Your own task"); `registry` finds them.

A model serves one task or several (the built-in classifiers also embed): its tasks read its outputs in
order, each taking the outputs it needs (`Heads.bind`).
"""

from __future__ import annotations

from torchrest.tasks.base import (
    IMAGE_SIZE,
    VIEWS,
    Answer,
    Decoded,
    Geometry,
    Head,
    Output,
    OutputShape,
    Rows,
    Schema,
    Task,
    flag,
    json_answer,
    label,
    number,
    shown,
)
from torchrest.tasks.fidelity import Bound, Closeness, Fidelity, Verdict

__all__ = [
    "IMAGE_SIZE",
    "VIEWS",
    "Answer",
    "Bound",
    "Closeness",
    "Decoded",
    "Fidelity",
    "Geometry",
    "Head",
    "Output",
    "OutputShape",
    "Rows",
    "Schema",
    "Task",
    "Verdict",
    "flag",
    "json_answer",
    "label",
    "number",
    "shown",
]
