"""What the hand-off between a front-end and the engine costs per image, without HTTP or decoding.

The same near-free model and the same decoded 224x224 pixels, K requests in flight, in two ways:
  - in process: ModelRuntime.infer on this process's event loop, as one torchrest process runs it;
  - across processes: a real engine process (torchrest.engine.service) and this process as its front-end
    (torchrest.frontend.remote over torchrest.frontend.link: pixels copied into a shared-memory slot, Infer,
    Answered, the row read back).
It reports images/s and CPU time per image (this process, and the engine's), rounds interleaved; the
difference is the hand-off's cost. Writes benchmark/results/<date>/handoff.{json,md,png}.

    python benchmark/handoff.py [--images 20000] [--in-flight 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from ceiling import near_free_model
from harness import ROOT, cpu_seconds_by_process, log, platform_name, write_results

from torchrest.config import ServerConfig
from torchrest.engine.build import build_manager, configure_torch
from torchrest.engine.service import run_engine
from torchrest.frontend.remote import RemoteModels
from torchrest.metrics import Metrics
from torchrest.slots import SlotPools


async def drive(infer: Any, images: int, in_flight: int) -> float:
    """Keep `in_flight` requests going until `images` are answered; the seconds it took."""
    pixels = np.random.default_rng(0).integers(0, 255, (224, 224, 3), np.uint8)
    remaining = images

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await infer(pixels, time.monotonic() + 60, "bench")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


def in_process(config: ServerConfig, images: int, in_flight: int) -> dict[str, float]:
    async def run() -> tuple[float, float, float]:
        models = build_manager(config, Metrics(), "cpu")
        name = next(iter(models.entries))
        await models.load(name)
        runtime = models.runtime(name)
        await drive(runtime.infer, 500, in_flight)  # warm-up
        before = cpu_seconds_by_process(os.getpid())
        seconds = await drive(runtime.infer, images, in_flight)
        spent = sum(cpu_seconds_by_process(os.getpid()).values()) - sum(before.values())
        batch = await images_per_batch(models)
        await models.stop()
        return seconds, spent, batch

    seconds, spent, batch = uvloop.run(run())
    return {"images_per_s": images / seconds, "cpu_us_per_image": spent / images * 1e6, "images_per_batch": batch}


def across_processes(config: ServerConfig, images: int, in_flight: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="handoff-"))
    (folder / "metrics").mkdir()
    engine = multiprocessing.get_context("spawn").Process(
        target=run_engine, args=(config, "cpu", folder / "engine.sock", folder / "metrics")
    )
    engine.start()
    assert engine.pid is not None
    engine_pid = engine.pid
    slots = SlotPools(os.getpid(), 0)

    async def run() -> tuple[float, float, float, float]:
        models = RemoteModels(folder / "engine.sock", 0, slots, config.max_image_pixels, Metrics())
        await models.open(lambda: None)
        while models.not_ready_reason() is not None:
            await asyncio.sleep(0.05)
        runtime = models.runtime(None)
        await drive(runtime.infer, 500, in_flight)
        here, there = cpu_seconds_by_process(os.getpid()), cpu_seconds_by_process(engine_pid)
        seconds = await drive(runtime.infer, images, in_flight)
        there_s = sum(cpu_seconds_by_process(engine_pid).values()) - sum(there.values())
        # this process's figure takes in its children: the engine is one of them
        here_s = sum(cpu_seconds_by_process(os.getpid()).values()) - sum(here.values()) - there_s
        batch = await images_per_batch(models)
        await models.close()
        return seconds, here_s, there_s, batch

    try:
        seconds, here_s, there_s, batch = uvloop.run(run())
    finally:
        engine.terminate()
        engine.join(30)
        slots.close()
    return {
        "images_per_s": images / seconds,
        "cpu_us_per_image": (here_s + there_s) / images * 1e6,
        "frontend_cpu_us_per_image": here_s / images * 1e6,
        "engine_cpu_us_per_image": there_s / images * 1e6,
        "images_per_batch": batch,
    }


async def images_per_batch(models: Any) -> float:
    """The mean batch the model ran so far (Triton's statistics: images over executions)."""
    stats = (await models.statistics())[0]
    return float(stats["inference_count"]) / max(1, int(stats["execution_count"]))


def markdown(results: dict[str, Any]) -> str:
    one, two = results["in_process"], results["across_processes"]
    return (
        f"# The hand-off between front-end and engine, {results['date']}\n\n"
        f"Machine: {results['machine']}. {results['images']} images of 224x224 pixels, {results['in_flight']} in "
        f"flight, near-free model, medians of {results['rounds']} interleaved rounds. "
        f"Command: `{results['command']}`\n\n"
        "| | images/s | images per batch | CPU us per image (all processes) | front-end | engine |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        f"| in process | {one['images_per_s']:.0f} | {one['images_per_batch']:.1f} "
        f"| {one['cpu_us_per_image']:.0f} | | |\n"
        f"| across processes | {two['images_per_s']:.0f} | {two['images_per_batch']:.1f} "
        f"| {two['cpu_us_per_image']:.0f} | {two['frontend_cpu_us_per_image']:.0f} "
        f"| {two['engine_cpu_us_per_image']:.0f} |\n\n"
        f"The hand-off costs {two['cpu_us_per_image'] - one['cpu_us_per_image']:.0f} us of CPU per image.\n"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 3.5))
    two = results["across_processes"]
    axis.barh(["in process"], [results["in_process"]["cpu_us_per_image"]], color="C0")
    axis.barh(["across processes"], [two["frontend_cpu_us_per_image"]], color="C1", label="front-end")
    axis.barh(
        ["across processes"], [two["engine_cpu_us_per_image"]], left=[two["frontend_cpu_us_per_image"]], color="C2",
        label="engine",
    )  # fmt: skip
    axis.set(xlabel="CPU us per image", title="Near-free model, pixels already decoded")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = near_free_model(Path(tempfile.mkdtemp(prefix="handoff-")))
    config = ServerConfig(model=str(model), log_level="warning")
    configure_torch(config)
    rounds: dict[str, list[dict[str, float]]] = {"in_process": [], "across_processes": []}
    for number in range(1, args.rounds + 1):
        for name, way in (("in_process", in_process), ("across_processes", across_processes)):
            rounds[name].append(way(config, args.images, args.in_flight))
            log(f"round {number} {name}: {rounds[name][-1]}")
    medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for name, runs in rounds.items()
    }
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "command": "python " + " ".join(sys.argv),
        "images": args.images,
        "in_flight": args.in_flight,
        "rounds": args.rounds,
        "rounds_measured": rounds,
        **medians,
    }
    write_results(
        args.out or ROOT / "benchmark" / "results" / dt.date.today().isoformat(), "handoff", results, markdown, plot
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
