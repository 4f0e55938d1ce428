"""Two models busy at once on one server: is the sum of their throughputs no worse than one model alone?

One repository with two models (by default EfficientNet-Lite0 and ResNet-18, random weights, each as
`torchrest optimize --candidates torchscript-frozen` writes it, with its served layout; `--candidate
openvino-fp32` for OpenVINO, whose one process-wide thread pool shares the cores by itself). On one server, wrk
uploads the photo to each model alone, then to both at once (two wrk processes), and the score is

    sum over the models of (its req/s while both are busy) / (its req/s alone on the same server)

1.0 is what perfect time-sharing gives (each model gets the cores for its share of the time, at full
speed); below 1.0 the models slow each other down beyond sharing. Every model is laid out on the whole
thread budget (torchrest/layout.py); measured with the layouts config.json holds and with one instance
of every thread per model (`--instances 1`), in interleaved rounds.
Writes benchmark/results/<date>/sharing.{json,md,png}. Needs wrk.

    python benchmark/sharing.py [--candidate torchscript-frozen | --repository DIR] [--duration 15]
                                [--connections 16] [--rounds 2] [--server-args FLAGS] [--stem sharing]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from harness import ROOT, free_port, log, platform_name, serving, write_results, wrk

MODELS = ("efficientnet_lite0", "resnet18")
MODES = {"config.json layouts": "", "one instance per model (--instances 1)": "--instances 1"}


def build_repository(out: Path, candidate: str) -> Path:
    for model in MODELS:
        log(f"optimize {model} ({candidate}, its served layout) into {out}")
        command = [
            *(sys.executable, "-m", "torchrest", "optimize", "--model", model, "--out", str(out)),
            *("--calibration", str(ROOT.parent / "shared" / "data"), "--candidates", candidate),
            *("--batch-sizes", "1,4,8", "--seconds-per-point", "0.5", "--fidelity-samples", "200"),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=900)
    return out


def one_mode(
    repository: Path, flag: str, image: Path, connections: int, seconds: float, extra: list[str]
) -> dict[str, Any]:
    port = free_port()
    command = [
        *(sys.executable, "-m", "torchrest", "serve", "--model-repository", str(repository), *flag.split(), *extra),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
    ]
    with serving(command, port) as url:

        def load(model: str, into: dict[str, dict[str, Any]], count: int = connections, span: float = seconds) -> None:
            into[model] = wrk(url, count, span, image, env={"PATH_QUERY": f"?model={model}"})

        for model in MODELS:  # warm-up
            load(model, {}, 4, 3)
        alone: dict[str, dict[str, Any]] = {}
        for model in MODELS:
            load(model, alone)
        both: dict[str, dict[str, Any]] = {}
        threads = [threading.Thread(target=load, args=(model, both)) for model in MODELS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    share = {model: both[model]["req_per_s"] / alone[model]["req_per_s"] for model in MODELS}
    return {
        "alone": {model: alone[model]["req_per_s"] for model in MODELS},
        "both": {model: both[model]["req_per_s"] for model in MODELS},
        "share": share,
        "score": sum(share.values()),
        "errors": sum(run["error_count"] for run in (*alone.values(), *both.values())),
    }


def _backends(repository: Path) -> dict[str, str]:
    configs = (json.loads((repository / model / "config.json").read_text()) for model in MODELS)
    return {config["name"]: f"{config['candidate']}, layout {config.get('layout')}" for config in configs}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Two busy models on one server, {results['date']}",
        "",
        f"Machine: {results['machine']}. {results['connections']} connections per model, "
        f"{results['duration_s']:.0f} s per run, server flags `{results['server_args'] or 'none'}`, "
        f"medians of {results['rounds']} interleaved rounds. Models: "
        + "; ".join(f"{name} ({backend})" for name, backend in results["backends"].items())
        + ". "
        "ResNet-18 has random weights (seeded). Command: "
        f"`{results['command']}`",
        "",
        "Score: the sum over both models of (req/s with both busy) / (req/s alone, same server). "
        "1.0 is perfect time-sharing; below it, the models slow each other beyond sharing.",
        "",
        "| mode | " + " | ".join(f"{m} alone | {m} with the other" for m in MODELS) + " | score | errors |",
        "|---|" + "---|---|" * len(MODELS) + "---|---|",
    ]
    for mode, summary in results["summary"].items():
        cells = " | ".join(f"{summary['alone'][m]:.1f} | {summary['both'][m]:.1f}" for m in MODELS)
        lines.append(f"| {mode} | {cells} | **{summary['score']:.2f}** | {summary['errors']} |")
    lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    modes = list(results["summary"])
    bottom = [0.0] * len(modes)
    for model in MODELS:
        shares = [results["summary"][mode]["share"][model] for mode in modes]
        axes.bar(modes, shares, bottom=bottom, label=f"{model}: with the other / alone")
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    axes.axhline(1.0, color="black", linestyle="--", linewidth=1, label="perfect time-sharing")
    axes.set_ylabel("sum of throughput shares")
    axes.set_title("Two busy models on one server")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="a repository of two models (default: optimize builds one)")
    parser.add_argument("--candidate", default="torchscript-frozen", help="what optimize builds the repository with")
    parser.add_argument("--stem", default="sharing", help="result file names: <stem>.json, .md, .png")
    parser.add_argument("--server-args", default="", help="extra flags for torchrest serve (e.g. --instances 1)")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image", type=Path, default=ROOT / "tests" / "data" / "cat.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sharing-") as scratch:
        repository = args.repository or build_repository(Path(scratch), args.candidate)
        backends = _backends(repository)
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for index in range(args.rounds):
            for mode, flag in MODES.items():
                run = one_mode(repository, flag, args.image, args.connections, args.duration, args.server_args.split())
                rounds[mode].append(run)
                log(f"round {index + 1} {mode}: score {run['score']:.2f} (alone {run['alone']}, both {run['both']})")
    summary = {
        mode: {
            key: {m: statistics.median(run[key][m] for run in runs) for m in MODELS}
            for key in ("alone", "both", "share")
        }
        | {
            "score": statistics.median(run["score"] for run in runs),
            "errors": sum(run["errors"] for run in runs),
        }
        for mode, runs in rounds.items()
    }
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform_name(),
        "command": "python benchmark/sharing.py " + " ".join(sys.argv[1:]),
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "server_args": args.server_args,
        "backends": backends,
        "runs": rounds,
        "summary": summary,
    }
    write_results(args.out, args.stem, results, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
