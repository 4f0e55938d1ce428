"""Does an AOTInductor model hold the GIL while it runs? torch's loader against torchrest's backend.

    python benchmark/aoti_gil.py [--model resnet18] [--batch 8] [--out benchmark/results/<date>]

The model (ResNet-18 has random weights, seeded) is exported with a dynamic batch and compiled once with
AOTInductor. A pure-Python thread counts while, on another thread, the model runs batches: alone for a
second (its full speed), then beside `torch._inductor.aoti_load_package`'s runner, then beside
torchrest's AOTIBackend (the package's C interface through ctypes), then beside two AOTIBackend instances
at once. The counter's speed beside each, as a share of its speed alone, says how much of the interpreter
the model left to everything else in the process (the event loop, the decode threads); the batches/s
say whether two instances ran at once. Writes <out>/aoti-gil.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchrest.backends.aoti_backend import AOTIBackend  # noqa: E402
from torchrest.config import ModelSource  # noqa: E402
from torchrest.export import export_program, quiet  # noqa: E402
from torchrest.models.registry import load_model  # noqa: E402


def counting(seconds: float, work: list[Callable[[], object]]) -> tuple[float, float]:
    """(the counter's increments per second, batches per second) while `work` (one thread each) runs."""
    stop = threading.Event()
    count = [0]
    batches = [0]

    def count_up() -> None:
        while not stop.is_set():
            count[0] += 1

    def run(step: Callable[[], object]) -> None:
        torch.set_num_threads(1)
        while not stop.is_set():
            step()
            batches[0] += 1

    threads = [threading.Thread(target=count_up), *(threading.Thread(target=run, args=(step,)) for step in work)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return count[0] / seconds, batches[0] / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(ModelSource(args.model))
    assert model.module is not None
    example = torch.zeros((2, 224, 224, 3), dtype=torch.uint8)
    package = Path(tempfile.mkdtemp(prefix="aoti-gil-")) / "model.pt2"
    print(f"compiling {args.model} with AOTInductor ...", file=sys.stderr)
    with torch.no_grad(), quiet():
        torch._inductor.aoti_compile_and_package(
            export_program(model.module, example), package_path=str(package), inductor_configs={"freezing": True}
        )
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8)
    loader = torch._inductor.aoti_load_package(str(package))
    pixels = torch.from_numpy(batch)
    ours = [AOTIBackend(package, threads=1) for _ in range(2)]

    def torch_loader() -> object:
        with torch.inference_mode():
            return loader(pixels)

    alone, _ = counting(args.seconds, [])
    rows = {
        "aoti_load_package (pybind)": counting(args.seconds, [torch_loader]),
        "torchrest AOTIBackend (ctypes)": counting(args.seconds, [lambda: ours[0].run(batch)]),
        "two AOTIBackend instances at once": counting(
            args.seconds, [lambda: ours[0].run(batch), lambda: ours[1].run(batch)]
        ),
    }
    results = {
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "batch": args.batch,
        "counter_alone_per_s": alone,
        "runs": {name: {"counter_share": rate / alone, "batches_per_s": done} for name, (rate, done) in rows.items()},
    }
    lines = [
        f"# AOTInductor and the GIL ({args.model}, batches of {args.batch}, one thread per model call)",
        "",
        "| beside | a Python thread's speed (share of alone) | batches/s |",
        "|---|---|---|",
        *(f"| {name} | {r['counter_share']:.0%} | {r['batches_per_s']:.1f} |" for name, r in results["runs"].items()),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aoti-gil.json").write_text(json.dumps(results, indent=2))
    (args.out / "aoti-gil.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
