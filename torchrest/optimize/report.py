"""What optimize measured, written three ways: report.json (for tools), report.md (for people) and
report.png (throughput against batch size, one line per candidate that ran)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchrest.optimize.fidelity import Fidelity

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
    fidelity: Fidelity | None = None
    build_s: float | None = None
    chosen: bool = False

    @property
    def top1_agreement(self) -> float | None:
        return None if self.fidelity is None else self.fidelity.top1_agreement

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fidelity"] = None if self.fidelity is None else self.fidelity.to_dict()
        data["top1_agreement"] = self.top1_agreement
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
    max_top1_disagreement: float
    samples: dict[str, Any]
    candidates: list[CandidateResult]
    created: str
    chosen: str | None = None
    notes: list[str] = field(default_factory=list)  # what makes these figures weaker than they look

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = [candidate.to_dict() for candidate in self.candidates]
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
    bound = f"{report.max_top1_disagreement:.1%}"
    lines = [
        f"# torchrest optimize: {report.model}",
        "",
        f"{report.created} on {report.machine}, device {report.device}, {report.threads} threads per candidate.",
        f"Fidelity on {report.samples['held_out']} held-out inputs ({report.samples['split']}); "
        f"a candidate is rejected when its top-1 differs from the fp32 reference on more than {bound} of them.",
        f"INT8 calibration used {report.samples['calibration']} inputs.",
        *(f"**Note:** {note}" for note in report.notes),
        "",
        f"**Chosen: {report.chosen or 'nothing (no candidate met the bound)'}**",
        "",
        "| candidate | precision | status | best img/s (batch) | vs eager | batch-1 ms | top-1 agree | "
        "top-5 overlap | max Δp | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.candidates:
        best = f"{c.best_throughput:.1f} ({c.best_batch_size})" if c.best_throughput else "-"
        agreement, overlap, largest = (
            (None, None, None)
            if c.fidelity is None
            else (c.fidelity.top1_agreement, c.fidelity.top5_overlap, c.fidelity.max_probability_diff)
        )
        name = f"**{c.name}**" if c.chosen else c.name
        lines.append(
            f"| {name} | {c.precision} | {c.status}{' (chosen)' if c.chosen else ''} | {best} | "
            f"{_num(c.speedup, '{:.2f}x')} | {_num(c.latency_bs1_ms, '{:.1f}')} | "
            f"{_num(agreement, '{:.1%}')} | {_num(overlap, '{:.1%}')} | {_num(largest, '{:.3f}')} | "
            f"{c.reason or c.route} |"
        )
    measured = [c for c in report.candidates if c.throughput]
    if measured:
        lines += ["", "Throughput (img/s) by batch size:", ""]
        lines.append("| candidate | " + " | ".join(str(size) for size in report.batch_sizes) + " |")
        lines.append("|---|" + "---|" * len(report.batch_sizes))
        for c in measured:
            rates = " | ".join(_num(c.throughput.get(size), "{:.1f}") for size in report.batch_sizes)
            lines.append(f"| {c.name} | {rates} |")
    versions = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    lines += ["", f"Versions: {versions}.", ""]
    return "\n".join(lines)


def plot(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for c in report.candidates:
        if not c.throughput:
            continue
        sizes = sorted(c.throughput)
        style = {"linewidth": 3} if c.chosen else {"linewidth": 1.2, "linestyle": "-" if c.status == OK else ":"}
        label = f"{c.name}{' (chosen)' if c.chosen else ''}{' (rejected)' if c.status == REJECTED else ''}"
        axes.plot(sizes, [c.throughput[s] for s in sizes], marker="o", label=label, **style)
    axes.set_xscale("log", base=2)
    axes.set_xticks(report.batch_sizes, [str(size) for size in report.batch_sizes])
    axes.set_xlabel("batch size")
    axes.set_ylabel("images / s")
    axes.set_ylim(bottom=0)
    axes.set_title(f"{report.model}: throughput by candidate ({report.device}, {report.threads} threads)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
