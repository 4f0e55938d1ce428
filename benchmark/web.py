"""What the web page costs the server: req/s at 100 connections with no page open and with one open
(headless Chromium polling /web/stats once a second and redrawing its charts), in one run, alternating.

    python benchmark/web.py [--rounds 3] [--duration 15]

Writes benchmark/results/<date>/web.{json,md,png}. Needs wrk and Debian's chromium. The browser runs on
the same cores as the server and wrk: the "page open" rows include what drawing the page costs there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import ROOT, free_port, log, platform_name, serving_process, torchrest_command, write_results, wrk

FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def markdown(results: dict[str, Any]) -> str:
    rows = results["summary"]
    lines = [
        f"# torchrest: the web page's cost, {results['date']}",
        "",
        f"Machine: {results['machine']}. efficientnet_lite0, wrk at 100 connections uploading cat.jpg, "
        f"{results['duration_s']:.0f} s runs, medians of {results['rounds']} rounds. Command: `{results['command']}`",
        "",
        "| page | req/s | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("closed", "open"):
        row = rows[name]
        lines.append(
            f"| {name} | {row['req_per_s']:.1f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['errors']} |"
        )
    lines += ["", f"Open / closed: **{rows['open']['req_per_s'] / rows['closed']['req_per_s']:.0%}**."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 3.5))
    for name, color in (("closed", "#888"), ("open", "#2f6fdf")):
        values = [run["req_per_s"] for run in results["runs"][name]]
        axis.plot(range(1, len(values) + 1), values, "o-", color=color, label=f"page {name}")
    axis.set(xlabel="round", ylabel="req/s at 100 connections", title="torchrest with and without its page open")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    photo = ROOT / "tests" / "data" / "cat.jpg"
    port = free_port()
    runs: dict[str, list[dict[str, Any]]] = {"closed": [], "open": []}
    with serving_process(torchrest_command("efficientnet_lite0", port, ["--log-level", "warning"]), port) as (url, _):
        wrk(url, 8, 5.0, photo)  # warm-up
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
            for number in range(1, args.rounds + 1):
                for name in ("closed", "open") if number % 2 else ("open", "closed"):
                    page = browser.new_page() if name == "open" else None
                    if page is not None:
                        page.goto(f"{url}/")
                        page.wait_for_selector("#model-efficientnet_lite0", state="attached")
                    result = wrk(url, 100, args.duration, photo)
                    if page is not None:
                        page.close()
                    runs[name].append(result)
                    log(
                        f"round {number}, page {name:<6}: {result['req_per_s']:6.1f} req/s  "
                        f"p99 {result['latency_ms']['p99']:7.0f} ms  errors {result['error_count']}"
                    )
            browser.close()
    summary = {
        name: {
            "req_per_s": statistics.median(r["req_per_s"] for r in measured),
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in measured),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in measured),
            "errors": sum(r["error_count"] for r in measured),
        }
        for name, measured in runs.items()
    }
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "command": "python " + " ".join(sys.argv),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "runs": runs,
        "summary": summary,
    }
    write_results(
        args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat(), "web", results, markdown, plot
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
