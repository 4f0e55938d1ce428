"""optimize's fidelity gate, per task: what that task's users check, a candidate's answers against the fp32
reference's on the same held-out inputs. A candidate passes when every task its model serves passes.

    classify  top-1 agreement >= 1 - max_top1_disagreement (with labelled photos and --max-accuracy-drop:
              top-1 accuracy at most that far below the reference's)
    embed     the lowest cosine similarity of an embedding to the reference's >= min_cosine, and each
              input's nearest neighbour among the others (by cosine) the reference's for >= min_neighbours_kept
    detect    the reference's boxes (default thresholds) matched by a box of the same class with IoU >= box_iou
              for >= min_box_match of them, and no more than max_extra_boxes unmatched boxes (per reference box)
    segment   pixels (of the model's class map) with the reference's class >= min_pixel_agreement

Answers are read by the model's own heads (torchrest.tasks), as the server reads them, a chunk at a time:
a detector's raw outputs for hundreds of 640 x 640 inputs would not fit in memory, its boxes do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from torchrest.errors import TorchrestError
from torchrest.optimize.fidelity import accuracy, compare
from torchrest.tasks import CLASSIFY, DETECT, EMBED, SEGMENT
from torchrest.tasks.classify import softmax
from torchrest.tasks.detect import DetectOptions
from torchrest.tasks.registry import Heads

Outputs = Sequence[np.ndarray]  # a model's outputs for a batch, in order
TaskAnswers = dict[str, Any]  # task -> its answers for the inputs, in order (an array, or a list of boxes)
CHUNK = 16  # inputs run at a time
NEIGHBOUR_TIE = 1e-3  # cosine: two neighbours this close are a tie (views of one photo often are)


@dataclass(frozen=True, slots=True)
class Bounds:
    """Every task's bound (flags of `torchrest optimize`)."""

    max_top1_disagreement: float = 0.01
    max_accuracy_drop: float | None = None  # classify with labelled photos: the bound is on accuracy
    min_cosine: float = 0.99
    min_neighbours_kept: float = 0.99
    box_iou: float = 0.9
    min_box_match: float = 0.99
    max_extra_boxes: float = 0.01
    min_pixel_agreement: float = 0.99


@dataclass(frozen=True, slots=True)
class Verdict:
    """One task's measure for one candidate: what the report and config.json record."""

    task: str
    measure: str
    value: float
    bound: float
    passed: bool
    reason: str = ""  # why it failed, in a line (empty when it passed)
    details: dict[str, float] = field(default_factory=dict)  # the task's other figures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def shown(self) -> str:
        """The value as the report prints it: a cosine as a number, a share as a percentage."""
        return shown(self.measure, self.value)

    def summary(self) -> dict[str, Any]:
        """config.json's record: the measure, its value and its bound."""
        return {"task": self.task, "measure": self.measure, "value": round(self.value, 6), "bound": self.bound}


class Gate:
    """A model's tasks (its bound heads) and their bounds: answers read from outputs, judged against the
    reference's."""

    def __init__(self, heads: Heads, bounds: Bounds, labels: np.ndarray | None = None) -> None:
        self.heads = heads
        self.bounds = bounds
        self.labels = labels  # the held-out inputs' classes (-1: unlabelled), for the accuracy bound
        self.tasks = heads.tasks

    @property
    def criterion(self) -> str:
        """What the INT8 search reports per step: the first task's measure."""
        task = self.tasks[0]
        if task == CLASSIFY:
            return "top-1 accuracy" if self._by_accuracy else "top-1 agreement"
        return {EMBED: "min cosine", DETECT: "box match", SEGMENT: "pixel agreement"}[task]

    @property
    def _by_accuracy(self) -> bool:
        return self.bounds.max_accuracy_drop is not None and self.labels is not None

    def answers(self, outputs: Outputs) -> TaskAnswers:
        """Each task's answers for a batch's outputs. An image whose answer is an error (NaN in its outputs)
        keeps NaN (classify, embed), gets the class map of -1 (segment) or None (detect): it agrees with
        nothing, and where it is the reference's, the image is left out of the comparison."""
        count = len(outputs[0])
        found: TaskAnswers = {}
        for task, head in self.heads.by_task.items():
            if task in (CLASSIFY, EMBED):  # the raw logits or vectors: what the head's answer is made of
                found[task] = np.array(outputs[head.output], dtype=np.float32)
                continue
            options = [DetectOptions() if task == DETECT else None] * count
            decoded = [
                None if isinstance(item, TorchrestError) else item[0]
                for item in head.decode(outputs, slice(0, count), options)
            ]
            if task == SEGMENT:
                maps = np.full((count, *outputs[head.output].shape[2:]), -1, np.int16)
                for row, value in enumerate(decoded):
                    if value is not None:
                        maps[row] = value
                found[task] = maps
            else:
                found[task] = decoded
        return found

    def run(self, run: Callable[[np.ndarray], Outputs], inputs: np.ndarray) -> TaskAnswers:
        """`run` over `inputs` a chunk at a time -> each task's answers for all of them."""
        parts = [self.answers(run(inputs[at : at + CHUNK])) for at in range(0, len(inputs), CHUNK)]
        return {task: _joined([part[task] for part in parts]) for task in self.tasks}

    def judge(self, reference: TaskAnswers, candidate: TaskAnswers) -> list[Verdict]:
        verdicts = []
        for task in self.tasks:
            valid = _valid(task, reference[task])
            left_out = len(valid) - int(valid.sum())
            ref, cand = _kept(reference[task], valid), _kept(candidate[task], valid)
            verdict = self._judge(task, ref, cand, None if self.labels is None else self.labels[valid])
            if left_out:
                verdict.details["left_out"] = left_out  # inputs fp32 itself gave no answer for
            verdicts.append(verdict)
        return verdicts

    def _judge(self, task: str, reference: Any, candidate: Any, labels: np.ndarray | None) -> Verdict:
        bounds = self.bounds
        if task == CLASSIFY:
            fidelity = compare(reference, candidate)
            details = fidelity.to_dict()
            if self._by_accuracy:
                assert labels is not None and bounds.max_accuracy_drop is not None
                value, baseline = accuracy(candidate, labels), accuracy(reference, labels)
                drop, most = baseline - value, bounds.max_accuracy_drop
                reason = f"top-1 accuracy {drop:.1%} below fp32's > {most:.1%}" if drop > most + 1e-9 else ""
                return Verdict(task, "top-1 accuracy", value, baseline - most, not reason, reason, details)
            agreement, most = fidelity.top1_agreement, bounds.max_top1_disagreement
            reason = f"top-1 disagreement {1 - agreement:.1%} > {most:.1%}" if 1 - agreement > most + 1e-9 else ""
            return Verdict(task, "top-1 agreement", agreement, 1 - most, not reason, reason, details)
        if task == EMBED:
            lowest, kept = embedding_agreement(reference, candidate)
            reasons = []
            if lowest < bounds.min_cosine - 1e-9:
                reasons.append(f"min cosine {lowest:.4f} < {bounds.min_cosine:.4f}")
            if kept < bounds.min_neighbours_kept - 1e-9:
                reasons.append(f"nearest neighbour kept for {kept:.1%} < {bounds.min_neighbours_kept:.1%}")
            details = {"neighbours_kept": kept, "min_neighbours_kept": bounds.min_neighbours_kept}
            return Verdict(task, "min cosine", lowest, bounds.min_cosine, not reasons, "; ".join(reasons), details)
        if task == DETECT:
            matched, extra, boxes = box_agreement(reference, candidate, bounds.box_iou)
            reasons = []
            if matched < bounds.min_box_match - 1e-9:
                reasons.append(f"boxes matched (IoU >= {bounds.box_iou:g}) {matched:.1%} < {bounds.min_box_match:.1%}")
            if extra > bounds.max_extra_boxes + 1e-9:
                reasons.append(f"extra boxes {extra:.1%} > {bounds.max_extra_boxes:.1%}")
            details = {"extra_boxes": extra, "max_extra_boxes": bounds.max_extra_boxes, "reference_boxes": boxes}
            details["iou"] = bounds.box_iou
            return Verdict(task, "box match", matched, bounds.min_box_match, not reasons, "; ".join(reasons), details)
        agreement, least = float(np.mean(reference == candidate)), bounds.min_pixel_agreement
        reason = f"pixel agreement {agreement:.2%} < {least:.2%}" if agreement < least - 1e-9 else ""
        return Verdict(task, "pixel agreement", agreement, least, not reason, reason)

    def harm(self, reference: Outputs, candidate: Outputs) -> float:
        """How far raw outputs moved, summed over the tasks (the INT8 search's ranking of layers): the mean KL
        divergence of a classifier's probabilities, the relative L2 distance of any other task's outputs."""
        total = 0.0
        for task, head in self.heads.by_task.items():
            if task == CLASSIFY:
                total += kl_divergence(reference[head.output], candidate[head.output])
            elif getattr(head, "layout", "") == "dense":  # boxes in pixels and class scores, each its own scale
                ref, cand = reference[head.output], candidate[head.output]
                total += relative_l2([ref[:, :4]], [cand[:, :4]]) + relative_l2([ref[:, 4:]], [cand[:, 4:]])
            else:
                read = [head.output] if hasattr(head, "output") else range(head.first, head.first + 3)  # post-NMS
                total += relative_l2([reference[i] for i in read], [candidate[i] for i in read])
        return total


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(N, D) each -> (the lowest cosine similarity of a candidate vector to its reference, the share of
    inputs whose nearest other input by cosine is the same under both). Up to ties: the candidate's nearest
    neighbour counts as the reference's when the reference finds it as near, within NEIGHBOUR_TIE."""
    a, b = _unit(reference), _unit(candidate)
    lowest = float(np.min(np.sum(a * b, axis=1)))
    if len(a) < 2:
        return lowest, 1.0
    reference_similarity = _similarity(a)
    chosen = np.argmax(_similarity(b), axis=1)
    rows = np.arange(len(a))
    kept = reference_similarity[rows, chosen] >= reference_similarity.max(axis=1) - NEIGHBOUR_TIE
    return lowest, float(np.mean(kept))


def box_agreement(
    reference: list[np.ndarray | None], candidate: list[np.ndarray | None], iou: float
) -> tuple[float, float, int]:
    """Each image's (K, 6) boxes (x1, y1, x2, y2, score, class) -> (share of the reference's boxes matched by
    a candidate box of the same class with IoU >= `iou`, unmatched candidate boxes per reference box, the
    reference's boxes). Greedy matching, the reference's most confident box first, each box used once."""
    matched = extra = total = 0
    empty = np.zeros((0, 6), np.float32)
    for ref, cand in zip(reference, candidate, strict=True):
        if ref is None:  # fp32 gave no answer for this image: nothing to match
            continue
        cand = empty if cand is None else cand
        total += len(ref)
        if len(ref) == 0 or len(cand) == 0:
            extra += len(cand)
            continue
        overlap = pairwise_iou(ref[:, :4], cand[:, :4])
        overlap[ref[:, 5][:, None] != cand[:, 5][None, :]] = 0.0
        free = np.ones(len(cand), bool)
        for row in np.argsort(-ref[:, 4], kind="stable"):
            scores = np.where(free, overlap[row], -1.0)
            best = int(np.argmax(scores))
            if scores[best] >= iou:
                free[best] = False
                matched += 1
        extra += int(free.sum())
    if total == 0:
        return (1.0 if extra == 0 else 0.0), float(extra), 0
    return matched / total, extra / total, total


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, 4) and (M, 4) x1, y1, x2, y2 -> (K, M) intersection over union."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def kl_divergence(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL divergence of the candidate's class probabilities from the reference's."""
    p, q = softmax(reference_logits.astype(np.float32)), softmax(logits.astype(np.float32))
    eps = 1e-9
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))


def relative_l2(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """||candidate - reference|| / ||reference|| over all the given outputs (NaN: infinitely far)."""
    moved = sum(_squares(np.subtract(c, r, dtype=np.float32)) for r, c in zip(reference, candidate, strict=True))
    size = sum(_squares(np.asarray(r, np.float32)) for r in reference)
    value = (moved / max(size, 1e-12)) ** 0.5
    return value if np.isfinite(value) else float("inf")


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.nan_to_num(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _similarity(unit: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair, an input with itself left out (-inf)."""
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity


def _squares(values: np.ndarray) -> float:
    """The sum of squares, in float64 (a float32 dot product of the flat array: no temporary copy)."""
    flat = values.reshape(-1)
    return float(np.dot(flat, flat).astype(np.float64))


def _valid(task: str, reference: Any) -> np.ndarray:
    """Which inputs fp32 gave an answer for (an error: NaN logits or vectors, a map of -1, no boxes list)."""
    if task == DETECT:
        return np.array([answer is not None for answer in reference], bool)
    if task == SEGMENT:
        return (reference >= 0).all(axis=tuple(range(1, reference.ndim)))
    return np.isfinite(reference).all(axis=1)


def _kept(answers: Any, valid: np.ndarray) -> Any:
    if isinstance(answers, list):
        return [answer for answer, keep in zip(answers, valid, strict=True) if keep]
    return answers[valid]


def shown(measure: str, value: float) -> str:
    """A measure's value as the report prints it: a cosine as a number, a share as a percentage."""
    return f"{value:.4f}" if measure == "min cosine" else f"{value:.1%}"


def _joined(parts: list[Any]) -> Any:
    if parts and isinstance(parts[0], list):
        return [item for part in parts for item in part]
    return np.concatenate(parts)
