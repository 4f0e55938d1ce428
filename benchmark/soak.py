"""Soak: mixed traffic at ~80% of capacity for 10 minutes, and what it leaves behind.

The mix, by share of requests:
  - valid images of several sizes (70%): a 160x107 JPEG, the 451x300 cat, a 600x400 JPEG, the
    astronaut as a 512x512 PNG, and a 3000x2000 JPEG (about 0.5 MB);
  - invalid bodies (20%): random bytes, a JPEG cut in half, an image sent as text/plain;
  - early disconnects (10%): the whole request sent, then the connection closed without reading.
Capacity is measured first with the same mix (a closed loop of 8 clients, 20 s); then requests leave
on a fixed schedule at 80% of it (open loop: latency counts from the scheduled moment). The server's
resident memory is sampled every second.

Reported: requests by kind and status, p50/p99 of valid requests per minute, resident memory of every
process of the server (one, or the supervisor, the engine and each front-end with --workers) at minute 1
and at the end (aim: within 5%), 5xx answers to valid input (aim: zero), and what the server left in
/dev/shm once stopped (aim: nothing). Writes benchmark/results/<date>/soak[-workers-N].{json,md,png}.

    python benchmark/soak.py [--minutes 10] [--load 0.8] [--model efficientnet_lite0] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import os
import random
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, free_port, log, platform_name, serving_process, torchrest_command, write_results
from openloop import BOUNDARY, multipart_body, read_response
from overload import MemorySampler, status_kib, tree_pids
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

DATA = ROOT / "tests" / "data"


@dataclass(frozen=True)
class Kind:
    name: str
    group: str  # valid, invalid, disconnect
    body: bytes
    content_type: str
    share: float


def request_kinds() -> list[Kind]:
    cat, coffee = (DATA / "cat.jpg").read_bytes(), (DATA / "coffee.jpg").read_bytes()

    def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    small = encoded(Image.open(DATA / "cat.jpg").resize((160, 107)), "JPEG", quality=90)
    png = encoded(Image.open(DATA / "astronaut.jpg").convert("RGB"), "PNG")
    large = encoded(Image.open(DATA / "rocket.jpg").resize((3000, 2000), Image.Resampling.BICUBIC), "JPEG", quality=92)
    multipart = f"multipart/form-data; boundary={BOUNDARY}"
    noise = random.Random(0).randbytes(20_000)
    return [
        Kind("small jpeg 160x107", "valid", multipart_body(small), multipart, 0.15),
        Kind("cat jpeg 451x300", "valid", multipart_body(cat), multipart, 0.20),
        Kind("coffee jpeg 600x400", "valid", coffee, "image/jpeg", 0.15),
        Kind("astronaut png 512x512", "valid", multipart_body(png), multipart, 0.10),
        Kind(f"large jpeg 3000x2000 ({len(large) // 1024} KiB)", "valid", multipart_body(large), multipart, 0.10),
        Kind("random bytes", "invalid", noise, "image/jpeg", 0.08),
        Kind("truncated jpeg", "invalid", multipart_body(cat[: len(cat) // 2]), multipart, 0.07),
        Kind("text/plain body", "invalid", cat, "text/plain", 0.05),
        Kind("early disconnect", "disconnect", multipart_body(cat), multipart, 0.10),
    ]


def http_request(kind: Kind, port: int) -> bytes:
    head = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {kind.content_type}\r\n"
        f"Content-Length: {len(kind.body)}\r\n\r\n"
    )
    return head.encode() + kind.body


@dataclass
class Outcome:
    kind: str
    group: str
    sent_s: float  # since the start of the run
    status: int  # 0: no answer (socket error or timeout); -1: we hung up on purpose
    latency_ms: float


class Client:
    """Keep-alive connections to the server, reused; a connection the server closes is dropped. As HTTP
    clients do, a request that fails on a reused connection before any answer arrives (the server
    closed it after its keep-alive timeout) is sent again once on a fresh one."""

    def __init__(self, port: int, timeout_s: float) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.failures: Counter[str] = Counter()  # why requests went unanswered
        self.stale_retries = 0

    async def send(self, kind: Kind, request: bytes) -> int:
        if kind.group == "disconnect":
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(request)
            await writer.drain()
            writer.close()
            return -1
        reused = bool(self.idle)
        connection = self.idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
        status = await self._exchange(connection, request, stale_ok=reused)
        if status is None:  # a stale keep-alive connection: once more, fresh
            self.stale_retries += 1
            connection = await asyncio.open_connection("127.0.0.1", self.port)
            status = await self._exchange(connection, request, stale_ok=False)
        return status or 0

    async def _exchange(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes, stale_ok: bool
    ) -> int | None:
        reader, writer = connection
        try:
            writer.write(request)
            await writer.drain()
            status, keep = await asyncio.wait_for(read_response(reader), self.timeout_s)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            writer.close()
            if stale_ok and not getattr(exc, "partial", b""):
                return None
            self.failures[type(exc).__name__] += 1
            return 0
        except (TimeoutError, OSError, ValueError) as exc:
            writer.close()
            self.failures[type(exc).__name__] += 1
            return 0
        if keep:
            self.idle.append(connection)
        else:
            writer.close()
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def closed_loop(port: int, kinds: list[Kind], seconds: float, clients: int = 8) -> float:
    """Valid requests answered per second by `clients` back-to-back senders of the mix: the capacity."""
    rng = random.Random(1)
    weights = [k.share for k in kinds]
    deadline = time.monotonic() + seconds
    answered = 0

    async def worker() -> None:
        nonlocal answered
        client = Client(port, 30)
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            status = await client.send(kind, http_request(kind, port))
            answered += kind.group == "valid" and status == 200
        client.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(clients)))
    valid_share = sum(k.share for k in kinds if k.group == "valid")
    return answered / (time.monotonic() - started) / valid_share  # requests of the whole mix per second


async def open_loop(port: int, kinds: list[Kind], rate: float, seconds: float) -> tuple[list[Outcome], Client]:
    rng = random.Random(2)
    weights = [k.share for k in kinds]
    requests = {k.name: http_request(k, port) for k in kinds}
    client = Client(port, 30)
    outcomes: list[Outcome] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    total = int(rate * seconds)
    next_report = 60.0

    async def one(index: int, kind: Kind) -> None:
        scheduled = start + index / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        status = await client.send(kind, requests[kind.name])
        outcomes.append(Outcome(kind.name, kind.group, scheduled - start, status, (loop.time() - scheduled) * 1000))

    tasks = []
    for index in range(total):
        tasks.append(asyncio.ensure_future(one(index, rng.choices(kinds, weights)[0])))
        if index % 200 == 0:
            await asyncio.sleep(0)  # schedule gradually, so memory holds ~seconds of pending tasks
            while loop.time() - start < index / rate - 5:
                await asyncio.sleep(1)
                elapsed = loop.time() - start
                if elapsed >= next_report:
                    minute = summarize_minute(outcomes, next_report - 60, next_report)
                    log(f"minute {next_report / 60:.0f}: {minute}")
                    next_report += 60
    await asyncio.gather(*tasks)
    client.close()
    return outcomes, client


def summarize_minute(outcomes: list[Outcome], begin_s: float, end_s: float) -> str:
    window = [o for o in outcomes if begin_s <= o.sent_s < end_s]
    valid = np.array([o.latency_ms for o in window if o.group == "valid" and o.status == 200] or [np.nan])
    statuses = Counter(o.status for o in window)
    return (
        f"{len(window)} requests, valid p50 {np.percentile(valid, 50):.0f} ms, p99 {np.percentile(valid, 99):.0f} ms, "
        f"statuses {dict(sorted(statuses.items()))}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.8, help="share of the measured capacity to send")
    parser.add_argument("--workers", type=int, default=1, help="front-end processes (1: one process)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = dt.datetime.now()
    kinds = request_kinds()
    port = free_port()
    command = torchrest_command(args.model, port, ["--workers", str(args.workers)])
    with serving_process(command, port) as (_, process):
        server_pid = process.pid
        log("capacity: 8 closed-loop clients sending the mix for 20 s")
        capacity = asyncio.run(closed_loop(port, kinds, 20.0))
        rate = args.load * capacity
        log(f"capacity {capacity:.1f} req/s of the mix; soak at {rate:.1f} req/s for {args.minutes:g} min")
        time.sleep(2)
        memory = MemorySampler(process.pid)
        each = ProcessMemory(process.pid)
        memory.start()
        each.start()
        outcomes, client = asyncio.run(open_loop(port, kinds, rate, args.minutes * 60))
        memory.stop()
        each.stop()
        alive = process.poll() is None
        server_counts = server_counters(port)
    left = sorted(path.name for path in Path("/dev/shm").glob(f"torchrest-{server_pid}-*"))
    results = summarize(outcomes, memory.samples_mib, capacity, rate, args, alive)
    results["server"] = server_counts
    results["processes"] = each.summary()
    results["left_in_dev_shm"] = left
    results["client"] = {"unanswered_by_reason": dict(client.failures), "stale_keepalive_retries": client.stale_retries}
    results |= {
        "date": started.isoformat(timespec="seconds"),
        "command": "python benchmark/soak.py " + " ".join(sys.argv[1:]),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform_name()}",
        "model": args.model,
        "workers": args.workers,
        "mix": [{"kind": k.name, "group": k.group, "share": k.share, "bytes": len(k.body)} for k in kinds],
    }
    out = args.out or ROOT / "benchmark" / "results" / started.date().isoformat()
    write_results(out, "soak" if args.workers == 1 else f"soak-workers-{args.workers}", results, markdown, plot)
    return 0


class ProcessMemory(MemorySampler):
    """Resident memory of each process of the server apart, by its name (torchrest-eng, torchrest-fe0, ...)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.by_process: dict[str, list[float]] = defaultdict(list)

    def run(self) -> None:
        while True:
            for pid in tree_pids(self.pid):
                with contextlib.suppress(OSError):
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    if name.startswith(("torchrest", "python")):  # not the resource tracker's
                        self.by_process[f"{name} ({pid})"].append(status_kib(pid, "VmRSS") / 1024)
            if self._stopping.wait(1.0):
                return

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, samples in self.by_process.items():
            first = samples[min(60, len(samples) - 1)]
            out[name] = {"minute_1": first, "end": samples[-1], "growth": samples[-1] / first - 1}
        return out


def server_counters(port: int) -> dict[str, float]:
    """The server's own counts: /classify answers by status, dropped requests by reason, model errors."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "torchrest_requests_total" and sample.labels.get("route") == "/classify":
                counts[f"status {sample.labels['status']}"] = sample.value
            elif sample.name == "torchrest_dropped_requests_total":
                counts[f"dropped {sample.labels['reason']}"] = sample.value
            elif sample.name in ("torchrest_model_errors_total", "torchrest_instance_restarts_total"):
                counts[sample.name.removeprefix("torchrest_").removesuffix("_total")] = sample.value
    return counts


def summarize(
    outcomes: list[Outcome], rss: list[float], capacity: float, rate: float, args: argparse.Namespace, alive: bool
) -> dict[str, Any]:
    by_kind: dict[str, Counter[int]] = defaultdict(Counter)
    for outcome in outcomes:
        by_kind[outcome.kind][outcome.status] += 1
    minutes = int(np.ceil(args.minutes))
    per_minute = []
    for minute in range(minutes):
        window = [o for o in outcomes if minute * 60 <= o.sent_s < (minute + 1) * 60]
        valid = [o.latency_ms for o in window if o.group == "valid" and o.status == 200]
        per_minute.append(
            {
                "minute": minute + 1,
                "requests": len(window),
                "valid_ok": len(valid),
                "p50_ms": float(np.percentile(valid, 50)) if valid else None,
                "p99_ms": float(np.percentile(valid, 99)) if valid else None,
            }
        )
    valid_ms = [o.latency_ms for o in outcomes if o.group == "valid" and o.status == 200]
    at_minute_1 = rss[min(60, len(rss) - 1)]
    return {
        "capacity_req_per_s": capacity,
        "rate_req_per_s": rate,
        "minutes": args.minutes,
        "requests": len(outcomes),
        "by_kind": {kind: {str(s): n for s, n in sorted(c.items())} for kind, c in by_kind.items()},
        "valid_5xx": sum(1 for o in outcomes if o.group == "valid" and o.status >= 500),
        "valid_unanswered": sum(1 for o in outcomes if o.group == "valid" and o.status == 0),
        "invalid_5xx": sum(1 for o in outcomes if o.group == "invalid" and o.status >= 500),
        "valid_latency_ms": {f"p{q}": float(np.percentile(valid_ms, q)) for q in (50, 90, 99)},
        "per_minute": per_minute,
        "rss_mib": {"samples": rss, "minute_1": at_minute_1, "end": rss[-1], "growth": rss[-1] / at_minute_1 - 1},
        "server_alive": alive,
    }


def markdown(results: dict[str, Any]) -> str:
    rss = results["rss_mib"]
    latency = results["valid_latency_ms"]
    lines = [
        f"# torchrest soak: {results['model']}, --workers {results['workers']}, {results['minutes']:g} min of mixed "
        f"traffic ({results['date']})",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`.",
        "",
        f"- capacity with this mix {results['capacity_req_per_s']:.1f} req/s; sent {results['rate_req_per_s']:.1f} "
        f"req/s (open loop), {results['requests']} requests.",
        f"- valid images answered 200: p50 {latency['p50']:.0f} ms, p90 {latency['p90']:.0f} ms, p99 "
        f"{latency['p99']:.0f} ms (from each request's scheduled moment).",
        f"- 5xx to valid input: **{results['valid_5xx']}**; valid requests unanswered: {results['valid_unanswered']}; "
        f"5xx to invalid input: {results['invalid_5xx']}.",
        f"- resident memory: {rss['minute_1']:.0f} MiB at minute 1, {rss['end']:.0f} MiB at the end "
        f"(**{100 * rss['growth']:+.1f}%**); server alive at the end: {results['server_alive']}.",
        f"- unanswered, by the client's reason: {results['client']['unanswered_by_reason'] or 'none'}; requests "
        f"re-sent once after the server had closed an idle keep-alive connection: "
        f"{results['client']['stale_keepalive_retries']}.",
        "- resident memory by process, minute 1 -> end: "
        + "; ".join(
            f"{name} {row['minute_1']:.0f} -> {row['end']:.0f} MiB ({100 * row['growth']:+.1f}%)"
            for name, row in results["processes"].items()
        )
        + f"; left in /dev/shm after the stop: {results['left_in_dev_shm'] or 'nothing'}.",
        "- the server's own counts over the whole run, capacity phase included (/metrics): "
        + ", ".join(f"{name} {value:.0f}" for name, value in results["server"].items())
        + ".",
        "",
        "| kind | answers by status (-1: we hung up on purpose, 0: no answer) |",
        "|---|---|",
    ]
    for kind, statuses in results["by_kind"].items():
        lines.append(f"| {kind} | {', '.join(f'{s}: {n}' for s, n in statuses.items())} |")
    lines += ["", "| minute | requests | valid 200 | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for row in results["per_minute"]:
        p50 = f"{row['p50_ms']:.0f}" if row["p50_ms"] is not None else "-"
        p99 = f"{row['p99_ms']:.0f}" if row["p99_ms"] is not None else "-"
        lines.append(f"| {row['minute']} | {row['requests']} | {row['valid_ok']} | {p50} | {p99} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    samples = results["rss_mib"]["samples"]
    memory_axis.plot(np.arange(len(samples)) / 60, samples)
    memory_axis.set(xlabel="minutes", ylabel="resident MiB", title="Server memory during the soak", ylim=(0, None))
    rows = [r for r in results["per_minute"] if r["p50_ms"] is not None]
    minutes = [r["minute"] for r in rows]
    latency_axis.plot(minutes, [r["p50_ms"] for r in rows], marker="o", label="p50")
    latency_axis.plot(minutes, [r["p99_ms"] for r in rows], marker="o", label="p99")
    latency_axis.set(xlabel="minute", ylabel="ms", title="Valid requests: latency per minute", ylim=(0, None))
    latency_axis.legend()
    for axis in (memory_axis, latency_axis):
        axis.grid(alpha=0.3)
    figure.suptitle(
        f"{results['model']} at {results['rate_req_per_s']:.1f} req/s "
        f"({results['rate_req_per_s'] / results['capacity_req_per_s']:.0%} of capacity), {results['machine']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
