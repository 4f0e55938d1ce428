"""What optimize measured, written three ways: report.json (for tools), report.md (for people) and
report.png (throughput against batch size, one line per candidate that ran)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchrest.optimize.gates import Verdict, shown
from torchrest.optimize.serving import LayoutResult

log = logging.getLogger("torchrest.optimize")

OK, REJECTED, SKIPPED, FAILED = "ok", "rejected", "skipped", "failed"


@dataclass
class CandidateResult:
    name: str
    precision: str
    route: str
    contender: bool  # may be chosen (named in --candidates); the reference always runs
    status: str = SKIPPED  # ok | rejected (fidelity) | skipped (cannot run here) | failed (crashed)
    reason: str = ""
    throughput: dict[int, float] = field(default_factory=dict)  # img/s by batch size
    best_throughput: float | None = None
    best_batch_size: int | None = None
    latency_bs1_ms: float | None = None
    speedup: float | None = None  # best throughput over the reference's
    verdicts: list[Verdict] = field(default_factory=list)  # each task's gate (torchrest.optimize.gates)
    build_s: float | None = None
    chosen: bool = False
    detail: str = ""  # how it was made, when that matters (the layers an INT8-mixed graph keeps in float)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdicts"] = [verdict.to_dict() for verdict in self.verdicts]
        data["throughput"] = {str(size): rate for size, rate in self.throughput.items()}
        return data


@dataclass
class Report:
    model: str
    device: str
    threads: int
    machine: str
    versions: dict[str, str]
    batch_sizes: list[int]
    samples: dict[str, Any]
    candidates: list[CandidateResult]
    created: str
    chosen: str | None = None
    notes: list[str] = field(default_factory=list)  # what makes these figures weaker than they look
    mixed_int8: dict[str, Any] = field(default_factory=dict)  # the INT8 search (optimize.mixed), by runtime
    objective: str = "throughput"
    layouts: list[LayoutResult] = field(default_factory=list)  # the served layouts measured (CPU only)
    tasks: list[str] = field(default_factory=list)  # what the model serves, its own first
    bounds: dict[str, Any] = field(default_factory=dict)  # every bound of its tasks' gates, by name

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = [candidate.to_dict() for candidate in self.candidates]
        data["layouts"] = [layout.to_dict() for layout in self.layouts]
        return data


def write_report(report: Report, folder: Path) -> list[Path]:
    """report.json, report.md and (when matplotlib is installed) report.png in `folder`."""
    paths = [folder / "report.json", folder / "report.md"]
    paths[0].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths[1].write_text(markdown(report))
    try:
        paths.append(plot(report, folder / "report.png"))
    except ImportError:
        log.warning("matplotlib is not installed: no report.png")
    return paths


def markdown(report: Report) -> str:
    """The report for people: what each task's gate asks, one row per candidate with each task's figures."""
    judged = [c for c in report.candidates if c.verdicts]
    gates = {v.task: v.gate for c in judged for v in c.verdicts}  # the same words for every candidate
    columns = {
        task: list(dict.fromkeys(k for c in judged for v in c.verdicts if v.task == task for k in v.figures))
        for task in report.tasks
    }
    labelled = report.samples.get("labelled_held_out", 0)
    lines = [
        f"# torchrest optimize: {report.model} ({', '.join(report.tasks)})",
        "",
        f"{report.created} on {report.machine}, device {report.device}, {report.threads} threads per candidate.",
        f"Fidelity on {report.samples['held_out']} held-out inputs ({report.samples['split']}"
        + (f"; {labelled} of them labelled" if labelled else "")
        + "), answers read as the server reads them; a candidate is kept when "
        + "; and ".join(f"{task}: {gates.get(task, 'not measured')}" for task in report.tasks)
        + ".",
        f"INT8 calibration used {report.samples['calibration']} inputs.",
        *(f"**Note:** {note}" for note in report.notes),
        "",
        f"**Chosen: {report.chosen or 'nothing (no candidate met the bound)'}**",
        "",
        "| candidate | precision | status | best img/s (batch) | vs eager | batch-1 ms | "
        + "".join(f"{task}: {heading} | " for task in report.tasks for heading in columns[task])
        + "note |",
        "|---|---|---|---|---|---|" + "---|" * sum(len(headings) for headings in columns.values()) + "---|",
    ]
    for c in report.candidates:
        best = f"{c.best_throughput:.1f} ({c.best_batch_size})" if c.best_throughput else "-"
        name = f"**{c.name}**" if c.chosen else c.name
        figures = {v.task: v.figures for v in c.verdicts}
        lines.append(
            f"| {name} | {c.precision} | {c.status}{' (chosen)' if c.chosen else ''} | {best} | "
            f"{_num(c.speedup, '{:.2f}x')} | {_num(c.latency_bs1_ms, '{:.1f}')} | "
            + "".join(
                f"{figures.get(task, {}).get(heading, '-')} | " for task in report.tasks for heading in columns[task]
            )
            + f"{c.reason or c.detail or c.route} |"
        )
    lines += _tail(report)
    return "\n".join(lines)


def _tail(report: Report) -> list[str]:
    """What every report ends with: throughput by batch size, the INT8 search, the served layouts."""
    lines: list[str] = []
    measured = [c for c in report.candidates if c.throughput]
    if measured:
        lines += ["", "Throughput (img/s) by batch size:", ""]
        lines.append("| candidate | " + " | ".join(str(size) for size in report.batch_sizes) + " |")
        lines.append("|---|" + "---|" * len(report.batch_sizes))
        for c in measured:
            rates = " | ".join(_num(c.throughput.get(size), "{:.1f}") for size in report.batch_sizes)
            lines.append(f"| {c.name} | {rates} |")
    for runtime, search in report.mixed_int8.items():
        lines += _mixed_section(runtime, search)
    lines += _layouts_section(report)
    versions = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    return [*lines, "", f"Versions: {versions}.", ""]


def _layouts_section(report: Report) -> list[str]:
    """The served layouts tried: throughput with full batches against a lone request's p50."""
    if not report.layouts:
        return []
    chosen = next(layout for layout in report.layouts if layout.chosen)
    baseline = next((layout for layout in report.layouts if layout.baseline), None)
    lines = [
        "",
        f"Served layouts (the real runtime in process, the calibration photos sent as files; objective "
        f"{report.objective}): **{chosen.candidate}, {chosen.layout.describe()}**, written to config.json.",
        *(
            [
                f"Served, that is {chosen.throughput / baseline.throughput:.2f}x the fp32 reference as serve runs "
                f"a model without a layout ({baseline.candidate}, {baseline.layout.describe()}: "
                f"{baseline.throughput:.1f} img/s)."
            ]
            if baseline
            else []
        ),
        "",
        "| candidate | instances x threads | batch cap | img/s (full batches) | p50 ms (one in flight) |",
        "|---|---|---|---|---|",
    ]
    for layout in report.layouts:
        mark = "**" if layout.chosen else ""
        name = f"{layout.candidate} (baseline)" if layout.baseline else layout.candidate
        lines.append(
            f"| {mark}{name}{mark} | {layout.instances} x {layout.threads} | {layout.max_batch_size} | "
            f"{mark}{layout.throughput:.1f}{mark} | {layout.p50_ms:.1f} |"
        )
    return lines


def _mixed_section(runtime: str, mixed: dict[str, Any]) -> list[str]:
    """The accuracy-aware INT8 search: the steps it took and the layers that did the most harm."""
    if not mixed["steps"]:
        return []
    lines = [
        "",
        f"Accuracy-aware INT8 on {runtime} (`{runtime}-int8-mixed`): layers ranked by the harm each does "
        "quantized alone (how far the outputs move from fp32's on calibration inputs: a classifier's mean KL "
        "divergence, else the relative L2 distance), then the most harmful kept in "
        f"float, as few as meet the bound on the held-out set. {len(mixed['kept_float'])} of {mixed['layers']} "
        f"layers kept in float, {shown(mixed['criterion'], mixed['agreement'])} {mixed['criterion']} "
        f"({'meets' if mixed['met_bound'] else 'breaks'} the bound), in {mixed['seconds']:.0f} s.",
        "",
        f"| layers in float | held-out {mixed['criterion']} |",
        "|---|---|",
        *(f"| {step['kept']} | {shown(mixed['criterion'], step['agreement'])} |" for step in mixed["steps"]),
    ]
    harm = sorted(mixed["harm"].items(), key=lambda item: -item[1])[:10]
    if harm:
        kept = set(mixed["kept_float"])
        lines += ["", "| most harmful layers | distance from fp32 (alone in INT8) | kept in float |", "|---|---|---|"]
        lines += [f"| `{layer}` | {value:.4f} | {'yes' if layer in kept else ''} |" for layer, value in harm]
    return lines


def plot(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2 if report.layouts else 1, figsize=(14 if report.layouts else 8, 5), dpi=120)
    axes = panels[0] if report.layouts else panels
    if report.layouts:
        _plot_layouts(report, panels[1])
    axes.set_prop_cycle(color=[plt.get_cmap("tab20")(index) for index in range(20)])
    for c in report.candidates:
        if not c.throughput:
            continue
        sizes = sorted(c.throughput)
        style = {"linewidth": 3} if c.chosen else {"linewidth": 1.2, "linestyle": "-" if c.status == OK else ":"}
        label = f"{c.name}{' (chosen)' if c.chosen else ''}{' (rejected)' if c.status == REJECTED else ''}"
        axes.plot(sizes, [c.throughput[s] for s in sizes], marker="o", label=label, **style)
    title = f"{report.model}: throughput by candidate ({report.device}, {report.threads} threads)"
    _batch_axes(axes, report.batch_sizes, "batch size", "images / s", title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _plot_layouts(report: Report, axes: Any) -> None:
    """Throughput with full batches against a lone request's p50: the trade a user picks from."""
    for candidate in dict.fromkeys(layout.candidate for layout in report.layouts if not layout.baseline):
        mine = [lay for lay in report.layouts if lay.candidate == candidate]
        for split in dict.fromkeys((lay.instances, lay.threads) for lay in mine):
            points = [lay for lay in mine if (lay.instances, lay.threads) == split]
            axes.plot(
                [lay.max_batch_size for lay in points],
                [lay.throughput for lay in points],
                marker="o",
                label=f"{candidate} {split[0]} x {split[1]} (p50 {points[0].p50_ms:.1f} ms alone)",
            )
    for baseline in (layout for layout in report.layouts if layout.baseline):
        axes.axhline(baseline.throughput, color="grey", linestyle=":", label=f"{baseline.candidate}, served plainly")
    chosen = next(layout for layout in report.layouts if layout.chosen)
    axes.scatter([chosen.max_batch_size], [chosen.throughput], s=200, facecolors="none", edgecolors="black", zorder=5)
    caps = sorted({layout.max_batch_size for layout in report.layouts})
    title = f"served layouts (circled: chosen, objective {report.objective})"
    _batch_axes(axes, caps, "batch cap", "images / s, served in process", title)


def _batch_axes(axes: Any, sizes: list[int], xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(size) for size in sizes])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
