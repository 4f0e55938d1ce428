"""`torchrest optimize` beyond classification, as a user runs it: what it finds for a detector and for the
default model's embeddings on this machine, and what each task's gate made of every candidate.

    python benchmark/optimize_tasks.py [--skip detect,embed] [--calibration DIR] [--out DIR]

detect   a YOLOv8n-sized network (benchmark/task_networks.py, 640 x 640, dense layout, random weights with its
         BatchNorm statistics measured on the calibration photos, so that it answers each photo with its own
         few boxes), saved as a user's .pt2 (float NCHW, pixels / 255); then
         `torchrest optimize --model detector.pt2 --task detect --input-size 640 --normalize unit`
         with every candidate: the box gate (fp32's boxes matched at IoU 0.9) decides, INT8 included.
embed    `torchrest optimize --model efficientnet_lite0 --task classify,embed`: the default model gated on its
         top-1 agreement and on its embeddings (the lowest cosine to fp32's, nearest neighbours kept).

Each run's report (report.md, report.json, report.png) is copied into <out>/optimize-<task>/; the summary
(speed of the chosen candidate against torch eager, the measure of every candidate) goes to
<out>/optimize_tasks.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from harness import ROOT, log, markdown_table, platform_name, save_figure, write_results
from task_networks import parameters, random_detector

from torchrest.export import export_program

PHOTOS = ROOT / "tests" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: detect, embed")
    parser.add_argument("--calibration", type=Path, default=PHOTOS, help="the sample photos optimize is given")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    parser.add_argument(
        "--models", type=Path, help="keep the model folders optimize wrote here (peers.py --detector-folder serves one)"
    )
    args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    results: dict[str, Any] = {"platform": platform_name(), "calibration": str(args.calibration)}
    with tempfile.TemporaryDirectory(prefix="optimize-tasks-") as scratch:
        folder = Path(scratch)
        if "detect" not in skip:
            photos = sorted(p for p in args.calibration.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
            network = random_detector(calibration=photos)
            path = folder / "detector.pt2"
            torch.export.save(export_program(network, torch.rand(2, 3, 640, 640)), str(path))
            log(f"detect: a YOLOv8n-sized network ({parameters(network) / 1e6:.2f} M parameters, random weights)")
            flags = ["--model", str(path), "--task", "detect", "--input-size", "640", "--normalize", "unit"]
            keep = args.out / "optimize-detect"
            results["detect"] = run(flags, args.calibration, folder / "detect", keep, args.models)
        if "embed" not in skip:
            log("embed: the default model, gated on its classes and its embeddings")
            flags = ["--model", "efficientnet_lite0", "--task", "classify,embed"]
            keep = args.out / "optimize-embed"
            results["embed"] = run(flags, args.calibration, folder / "embed", keep, args.models)
    write_results(args.out, "optimize_tasks", results, markdown, plot)
    return 0


def run(flags: list[str], calibration: Path, out: Path, keep: Path, models: Path | None) -> dict[str, Any]:
    """One `torchrest optimize` run, its progress shown; its report summarised and kept in `keep`, the model
    folder it wrote copied into `models` when given."""
    command = [sys.executable, "-m", "torchrest", "optimize", *flags, "--calibration", str(calibration)]
    command += ["--out", str(out)]
    log("  " + " ".join(command[2:]))
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    (folder,) = [path for path in out.iterdir() if (path / "config.json").is_file()]
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir(parents=True)
    for name in ("report.md", "report.json", "report.png", "config.json"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, keep / name)
    if models is not None:
        shutil.copytree(folder, models / folder.name, dirs_exist_ok=True)
    report = json.loads((folder / "report.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    ran = [c for c in report["candidates"] if c["status"] in ("ok", "rejected")]
    return {
        "command": "torchrest optimize " + " ".join(flags) + f" --calibration {calibration}",
        "seconds": round(seconds),
        "chosen": report["chosen"],
        "speedup_vs_eager": config["speedup_vs_eager"],
        "fidelity": config["fidelity"],
        "fidelity_other_tasks": config["fidelity_other_tasks"],
        "layout": config.get("layout"),
        "candidates": [
            {
                "name": c["name"],
                "status": c["status"],
                "img_per_s": c["best_throughput"],
                "batch": c["best_batch_size"],
                "speedup": c["speedup"],
                "measures": measures(c["verdicts"]),
                "reason": c["reason"],
            }
            for c in ran
        ],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# optimize beyond classification ({results['platform']})", ""]
    for task, part in results.items():
        if not isinstance(part, dict):
            continue
        first = part["fidelity"]
        lines += [
            f"## {task}",
            "",
            f"`{part['command']}` ({part['seconds']} s): chose **{part['chosen']}**, served "
            f"{part['speedup_vs_eager']:.2f}x torch eager (img/s of its served layout over eager's, side by side); "
            f"{first['measure']} {first['value']:.4f} (bound {first['bound']})"
            + "".join(f", {o['measure']} {o['value']:.4f} (bound {o['bound']})" for o in part["fidelity_other_tasks"])
            + ".",
            "",
        ]
        rows = []
        for c in part["candidates"]:
            measures = "; ".join(f"{task}: {measured(figures)}" for task, figures in c["measures"].items())
            rows.append(
                [
                    c["name"],
                    c["status"],
                    f"{c['img_per_s']:.1f} ({c['batch']})",
                    f"{c['speedup']:.2f}x",
                    measures,
                    c["reason"] or "",
                ]
            )
        lines += markdown_table(["candidate", "status", "img/s (batch)", "vs eager", "measures", "why rejected"], rows)
        lines.append("")
    return "\n".join(lines)


def measures(verdicts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each gate's value and figures, by task and measure ("detect box match")."""
    return {f"{v['task']} {v['measure']}": {"value": v["value"], **v["details"]} for v in verdicts}


SHOWN = {  # what each figure of a measure is called in the table (the bounds are in the command's line)
    "value": "",
    "top5_overlap": "top-5 overlap",
    "max_probability_diff": "max Δp",
    "neighbours_kept": "neighbours kept",
    "extra_boxes": "extra",
    "reference_boxes": "of fp32's boxes:",
}


def measured(figures: dict[str, float]) -> str:
    return ", ".join(f"{SHOWN[key]} {value:.4g}".strip() for key, value in figures.items() if key in SHOWN)


def plot(results: dict[str, Any], path: Path) -> None:
    """Img/s of each candidate that ran, one panel per task: kept (blue), rejected by the task's gate (grey),
    chosen (outlined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {task: part for task, part in results.items() if isinstance(part, dict)}
    if not parts:
        return
    figure, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 4.5), dpi=120, squeeze=False)
    for axis, (task, part) in zip(axes[0], parts.items(), strict=True):
        names = [c["name"] for c in part["candidates"]]
        rates = [c["img_per_s"] for c in part["candidates"]]
        colours = ["tab:blue" if c["status"] == "ok" else "lightgrey" for c in part["candidates"]]
        edges = ["black" if c["name"] == part["chosen"] else "none" for c in part["candidates"]]
        axis.barh(names, rates, color=colours, edgecolor=edges, linewidth=2)
        axis.invert_yaxis()
        axis.set_xlabel("images / s at the best batch size")
        first = part["fidelity"]
        axis.set_title(f"{task}: grey rejected by the {first['measure']} gate; outlined chosen", fontsize=10)
    save_figure(figure, list(axes[0]), f"optimize beyond classification ({results['platform']})", path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # the .md and .png again from a run's .json
        saved = Path(sys.argv[2])
        rendered = json.loads(saved.read_text())
        saved.with_suffix(".md").write_text(markdown(rendered))
        plot(rendered, saved.with_suffix(".png"))
        raise SystemExit(0)
    raise SystemExit(main())
