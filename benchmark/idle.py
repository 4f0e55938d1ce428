"""Idle and slow connections beside normal traffic: what do 10,000 idle keep-alive connections, or 500
clients sending their bodies a byte a second, cost the requests that do come?

For each process layout (--workers 1 and 2), one server (the default model), in turn:
  quiet   wrk at 8 connections uploading the cat to /classify: req/s and p99
  idle    the same beside 10,000 connections that each made one request and then sit idle (kept alive;
          one the server closes is opened again)
  slow    the same beside 500 clients each sending a 100 kB upload's headers, then its body a byte a second
          (one the server answers 408 and closes starts again)
and the server's file descriptors and resident memory (every process) before, at the end of each, and once
the clients have gone (nothing may stay behind). Writes <out>/idle.{json,md,png}. Needs wrk. Keep --duration
at 20 s or less: past the keep-alive timeout (30 s) the server closes every idle connection at about the
same moment and each is opened again with a request, a reconnect storm rather than idle connections.

    python benchmark/idle.py [--workers 1,2] [--duration 20] [--idle 10000] [--slow 500] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import bind
from harness import (
    ROOT,
    grouped_bars,
    log,
    markdown_table,
    platform_name,
    save_figure,
    serving_process,
    write_results,
    wrk,
)
from overload import status_kib, tree_pids

CAT = ROOT / "tests" / "data" / "cat.jpg"
SETTLE_S = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmark/idle.py " + " ".join(sys.argv[1:]),
        "idle": args.idle,
        "slow": args.slow,
        "layouts": {},
    }
    for workers in (int(count) for count in args.workers.split(",")):
        log(f"--workers {workers}")
        results["layouts"][str(workers)] = layout(workers, args)
    write_results(args.out, "idle", results, markdown, plot)
    return 0


def layout(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    command, port = bind([sys.executable, "-m", "torchrest", "serve", "--host", "127.0.0.1", "--port", "0"])
    command += ["--log-level", "warning", "--workers", str(workers)]
    out: dict[str, Any] = {}
    with serving_process(command, port) as (url, process):
        wrk(url, 8, 3, CAT)  # warm-up
        out["before"] = footprint(process.pid)
        for name, clients in (
            ("quiet", None),
            ("idle", (idle_clients, args.idle)),
            ("slow", (slow_clients, args.slow)),
        ):
            helper = None
            if clients is not None:
                target, count = clients
                helper = multiprocessing.get_context("spawn").Process(target=target, args=(port, count), daemon=True)
                helper.start()
                time.sleep(SETTLE_S + count / 2000)  # let them connect
            run = wrk(url, 8, args.duration, CAT)
            usage = footprint(process.pid)
            if helper is not None:
                helper.terminate()
                helper.join()
                time.sleep(SETTLE_S)
            out[name] = {
                "req_per_s": run["req_per_s"],
                "p99_ms": run["latency_ms"]["p99"],
                "errors": run["error_count"],
                **usage,
            }
            log(
                f"  {name}: {run['req_per_s']:.1f} req/s, p99 {run['latency_ms']['p99']:.1f} ms; "
                f"{usage['fds']} fds, {usage['rss_mib']:.0f} MiB"
            )
        out["after"] = footprint(process.pid)
    return out


def footprint(pid: int) -> dict[str, Any]:
    """Open file descriptors and resident MiB of the server, every process together."""
    pids = tree_pids(pid)
    fds = 0
    for each in pids:
        with contextlib.suppress(OSError):
            fds += len(os.listdir(f"/proc/{each}/fd"))
    return {"fds": fds, "rss_mib": sum(status_kib(each, "VmRSS") for each in pids) / 1024}


def idle_clients(port: int, count: int) -> None:
    """`count` connections that each make one request and then sit idle; one that is closed is reopened."""
    asyncio.run(_keep(port, count, _idle_one))


def slow_clients(port: int, count: int) -> None:
    """`count` uploads whose bodies come a byte a second; one that is answered and closed starts again."""
    asyncio.run(_keep(port, count, _slow_one))


async def _keep(port: int, count: int, one: Any) -> None:
    async def forever(index: int) -> None:
        await asyncio.sleep(index / 2000)  # not all at once
        while True:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await one(port)
            await asyncio.sleep(0.1)

    await asyncio.gather(*(forever(index) for index in range(count)))


async def _idle_one(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await reader.read()  # idle, kept alive, until the server closes it
    writer.close()


async def _slow_one(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    writer.write(head)
    await writer.drain()
    while not reader.at_eof():
        writer.write(b"\xff")
        await writer.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            if await asyncio.wait_for(reader.read(4096), 1.0) == b"":
                break
    writer.close()


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for workers, out in results["layouts"].items():
        quiet = out["quiet"]
        for name in ("quiet", "idle", "slow"):
            run = out[name]
            rows.append(
                [
                    workers,
                    name,
                    f"{run['req_per_s']:.1f}",
                    f"{run['req_per_s'] / quiet['req_per_s']:.2f}x",
                    f"{run['p99_ms']:.1f}",
                    f"{run['p99_ms'] / quiet['p99_ms']:.2f}x",
                    str(run["fds"]),
                    f"{run['rss_mib']:.0f}",
                ]
            )
        rows.append([workers, "after", "", "", "", "", str(out["after"]["fds"]), f"{out['after']['rss_mib']:.0f}"])
    header = ["--workers", "beside", "req/s", "vs quiet", "p99 ms", "vs quiet", "server fds", "server RSS MiB"]
    return "\n".join(
        [
            f"# Normal traffic beside {results['idle']} idle connections, or {results['slow']} slow uploads",
            "",
            f"{results['machine']}; {results['date']}; `{results['command']}`. Normal traffic: wrk at 8 connections "
            "uploading cat.jpg to /classify (the default model).",
            "",
            *markdown_table(header, rows),
            "",
        ]
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = ["quiet", "idle", "slow"]
    for axis, key, label in ((axes[0], "req_per_s", "req/s"), (axes[1], "p99_ms", "p99 ms")):
        series = {f"--workers {w}": [out[n][key] for n in names] for w, out in results["layouts"].items()}
        grouped_bars(axis, names, series, label)
    save_figure(figure, list(axes), "Normal traffic beside idle and slow connections", path)


if __name__ == "__main__":
    raise SystemExit(main())
