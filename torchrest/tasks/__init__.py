"""What a model is for, one module per task: what its model must output, how its images are fitted to the
input by default, how a batch's outputs become each image's answer (engine side), and how that answer is
written as JSON, as Open Inference Protocol tensors or as a PNG (front-end side). Everything else asks the
task; nothing else says `if task == ...`.

    classify   (N, classes) logits                       -> probabilities, the top k         crop
    embed      (N, D) features                           -> the vector                       crop
    detect     (N, 4 + C, A) dense, or post-NMS boxes    -> boxes in the original's pixels   letterbox
    segment    (N, C, h, w) class scores                 -> a class per original pixel       letterbox

A model serves one task or several (the built-in classifiers also embed): its tasks read its outputs in
order, each taking the outputs it needs (`Heads.bind`).
"""

from __future__ import annotations

CLASSIFY, EMBED, DETECT, SEGMENT = "classify", "embed", "detect", "segment"
# each task's default fitting of an image to the model's input (torchrest.resize): what its models expect
DEFAULT_RESIZE = {CLASSIFY: "crop", EMBED: "crop", DETECT: "letterbox", SEGMENT: "letterbox"}


class UnknownTask(ValueError):
    """A task name no task has (a configuration error: one line, exit 2)."""


def task_names(text: str) -> tuple[str, ...]:
    """'detect' or 'classify,embed' -> the tasks, checked (UnknownTask otherwise)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise UnknownTask(f"a model needs a task: {', '.join(DEFAULT_RESIZE)}")
    for name in names:
        if name not in DEFAULT_RESIZE:
            raise UnknownTask(f"unknown task {name!r}: choose {', '.join(DEFAULT_RESIZE)}")
    if len(set(names)) != len(names):
        raise UnknownTask(f"a task is named twice in {text!r}")
    return names


def default_resize(tasks: str) -> str:
    """How a model with these tasks (its first one decides) has its images fitted unless it says otherwise."""
    return DEFAULT_RESIZE[task_names(tasks)[0]]
