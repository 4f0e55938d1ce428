"""Accuracy-aware INT8: which layers of the INT8 graph must stay in float for it to stay faithful.

When the whole-graph INT8 graph breaks the fidelity bound, a few layers usually do most of the harm
(a depthwise convolution whose activations span a wide range, a layer just before the classifier).
The search finds a small set of them:

    calibrate once (ranges cached) -> harm of each layer: quantize it alone, distance from fp32
    -> keep the most harmful 1, 2, 4, ... in float until the held-out agreement meets the bound
    -> bisect back to the fewest that meet it -> the mixed QDQ graph, and the layers it keeps in float

Harm is ranked on the calibration inputs by how far the raw outputs move from fp32's (a classifier's
mean KL divergence, any other task's relative L2 distance: both move even where the task's measure does
not; torchrest.optimize.gates); only the number of layers kept is chosen on the held-out set, by the
task's own measure (box match, min cosine, pixel or top-1 agreement), which
the candidate is then measured on like any other. Each step is a QDQ rewrite from the cached ranges plus
one pass of the runtime that will serve it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torchrest.optimize.gates import shown

RANKING_INPUTS = 64  # calibration inputs each layer's harm is measured on
MOST_KEPT_SHARE = 0.5  # past half the layers in float, the graph is no longer worth calling INT8

Quantize = Callable[[list[str], Path], Path]  # (layers kept in float, where) -> QDQ graph
Harm = Callable[[Path], float]  # graph -> how far its outputs on the ranking inputs are from fp32's
Judge = Callable[[Path], tuple[float, bool]]  # graph -> (the task's measure on the held-out set, meets the bound)


@dataclass
class MixedSearch:
    """What the search found, for the report: the harm of each layer, each step tried, and the answer."""

    layers: int = 0  # quantizable layers (Conv, Gemm, MatMul) in the graph
    harm: dict[str, float] = field(default_factory=dict)  # layer -> distance from fp32, that layer alone in int8
    steps: list[dict[str, float]] = field(default_factory=list)  # {"kept": n, "agreement": a}
    kept_float: list[str] = field(default_factory=list)
    criterion: str = "top-1 agreement"  # what `agreement` measures: the first task's measure
    agreement: float = 0.0
    met_bound: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        if not self.steps:
            return ""
        shown = ", ".join(self.kept_float[:6]) + (", ..." if len(self.kept_float) > 6 else "")
        verdict = "meets the bound" if self.met_bound else "still breaks the bound"
        return (
            f"{len(self.kept_float)} of {self.layers} layers kept in float ({shown or 'none'}): "
            f"{self.agreement:.1%} held-out {self.criterion}, {verdict}; "
            f"{len(self.steps)} steps in {self.seconds:.0f} s"
        )


def search_float_layers(
    layers: list[str],
    quantize: Quantize,
    distance: Harm,
    judge: Judge,
    criterion: str,
    workdir: Path,
    progress: Callable[[str], None] = lambda text: None,
    harm: dict[str, float] | None = None,
) -> tuple[Path, MixedSearch]:
    """The QDQ graph with the fewest float layers (in order of harm) that `judge` passes on the held-out
    set, or, when none within MOST_KEPT_SHARE does, the most faithful one tried. `harm` reuses a ranking
    measured before (with another runtime) instead of measuring it again."""
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    found = MixedSearch(layers=len(layers), criterion=criterion)
    passed: set[int] = set()

    def agreement(kept: int) -> tuple[float, Path]:
        path = quantize(ranked[:kept], workdir / f"mixed-{kept}.onnx")
        value, meets = judge(path)
        if meets:
            passed.add(kept)
        found.steps.append({"kept": kept, "agreement": value})
        progress(f"{kept} layers in float: {criterion} {shown(criterion, value)}")
        return value, path

    ranked = list(layers)
    tried = {0: agreement(0)}  # the whole-graph INT8 graph
    if 0 in passed:
        return _found(found, ranked, tried, 0, True, started)

    if harm is not None:
        found.harm = dict(harm)
    for index, layer in enumerate(layer for layer in layers if layer not in found.harm):
        progress(f"harm of layer {index + 1}/{len(layers)}")
        alone = quantize([other for other in layers if other != layer], workdir / "alone.onnx")
        found.harm[layer] = distance(alone)
    ranked[:] = sorted(layers, key=lambda layer: -found.harm[layer])

    most = max(1, int(len(layers) * MOST_KEPT_SHARE))
    low, high = 0, 1  # `low` layers in float break the bound; grow `high` until it meets it
    tried[high] = agreement(high)
    while high not in passed:
        if high == most:
            best = max(tried, key=lambda n: (tried[n][0], -n))
            return _found(found, ranked, tried, best, False, started)
        low, high = high, min(2 * high, most)
        tried[high] = agreement(high)
    while high - low > 1:  # bisect to the fewest that meet it
        middle = (low + high) // 2
        tried[middle] = agreement(middle)
        low, high = (low, middle) if middle in passed else (middle, high)
    return _found(found, ranked, tried, high, True, started)


def _found(
    found: MixedSearch, ranked: list[str], tried: dict[int, tuple[float, Path]], kept: int, met: bool, started: float
) -> tuple[Path, MixedSearch]:
    found.agreement, path = tried[kept]
    found.kept_float = ranked[:kept]
    found.met_bound = met
    found.seconds = time.perf_counter() - started
    return path, found
