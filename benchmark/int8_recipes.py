"""Which INT8 recipe keeps a model closest to fp32: the whole-graph recipes `torchrest optimize` could
start its accuracy-aware search from, side by side on the same calibration and held-out sets.

    ONNX Runtime static QDQ: min-max (optimize's recipe), entropy, percentile 99.99; min-max with only
    convolutions and the classifier quantized
    NNCF (OpenVINO's quantizer; pip install nncf): default, mixed preset, full bias correction
    bf16 (OpenVINO, where the CPU has it): how far any rounding moves this held-out set

Each graph runs on OpenVINO; top-1 agreement with fp32 on the held-out views, and img/s at batch 8.
Writes benchmark/results/<date>/int8-recipes-<model>.{json,md,png}.

    python benchmark/int8_recipes.py [--model efficientnet_lite0] [--calibration ../shared/data]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import ROOT, log, platform_name, write_results

from torchrest.backends.inputs import FirstOutputs
from torchrest.backends.openvino_backend import cpu_capabilities
from torchrest.config import OptimizeConfig
from torchrest.cores import available_cores
from torchrest.models.registry import load_model
from torchrest.optimize.candidates import Context, has_vnni, static_int8
from torchrest.optimize.gates import Gate
from torchrest.optimize.samples import sample_sets
from torchrest.tasks.classify import compare
from torchrest.timing import median_call_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--calibration", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    import openvino as ov
    from onnxruntime.quantization import CalibrationMethod

    threads = available_cores()
    torch.set_num_threads(threads)
    config = OptimizeConfig(model=args.model, calibration=args.calibration)
    model = load_model(config)
    samples = sample_sets(args.calibration, model.input_spec, 128, 256, model.labels)
    core = ov.Core()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="int8-recipes-") as scratch:
        assert model.module is not None and model.heads is not None
        logits = FirstOutputs(model.module)  # the classifier's logits, not the features it also gives
        gate = Gate(model.heads)
        ctx = Context(logits, model.input_spec.size, "cpu", threads, Path(scratch), samples.calibration, gate)
        fp32 = ctx.onnx()
        prepared, _ = ctx.quantizable()

        def run_on_openvino(graph: Any, precision: str = "f32") -> tuple[np.ndarray, float]:
            options = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            compiled = core.compile_model(graph, "CPU", options | {"INFERENCE_PRECISION_HINT": precision})
            request = compiled.create_infer_request()

            def answer(batch: np.ndarray) -> np.ndarray:
                return np.asarray(request.infer([batch])[0])

            logits = np.concatenate([answer(samples.held_out[at : at + 16]) for at in range(0, 256, 16)])
            return logits, 8 / median_call_s(answer, samples.held_out[:8], 2.0)

        reference, reference_speed = run_on_openvino(str(fp32))

        def record(recipe: str, make: Callable[[], Any], precision: str = "f32") -> None:
            started = time.perf_counter()
            try:
                graph = make()
            except Exception as exc:  # noqa: BLE001 - a recipe that cannot run here is reported, not fatal
                rows.append({"recipe": recipe, "error": f"{type(exc).__name__}: {exc}"[:200]})
                log(f"{recipe:<42} failed: {rows[-1]['error']}")
                return
            build_s = time.perf_counter() - started
            logits, speed = run_on_openvino(graph, precision)
            agreement = compare(reference, logits).top1_agreement
            rows.append({"recipe": recipe, "agreement": agreement, "img_per_s": speed, "build_s": build_s})
            log(f"{recipe:<42} top-1 agreement {agreement:6.1%}  {speed:7.1f} img/s  (built in {build_s:.0f} s)")

        def ort(name: str, **options: Any) -> Callable[[], str]:
            out = Path(scratch) / f"{name}.onnx"
            return lambda: str(static_int8(prepared, out, samples.calibration, ctx.always_float(), **options))

        rows.append({"recipe": "fp32 (OpenVINO)", "agreement": 1.0, "img_per_s": reference_speed, "build_s": 0.0})
        if "BF16" in cpu_capabilities():
            record("bf16 (OpenVINO): any rounding", lambda: str(fp32), precision="bf16")
        record("ONNX Runtime min-max (optimize's recipe)", ort("minmax"))
        record("ONNX Runtime entropy", ort("entropy", calibrate_method=CalibrationMethod.Entropy))
        record(
            "ONNX Runtime percentile 99.99",
            ort("percentile", calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.99}),
        )
        record("ONNX Runtime min-max, convolutions only", ort("convs", op_types_to_quantize=["Conv", "Gemm"]))
        try:
            import nncf
        except ImportError:
            log("NNCF recipes skipped: pip install nncf")
        else:
            data = nncf.Dataset([samples.calibration[at : at + 1] for at in range(len(samples.calibration))])
            source = ov.convert_model(str(fp32))
            for recipe, options in (
                ("NNCF default (fast bias correction)", {}),
                ("NNCF mixed preset", {"preset": nncf.QuantizationPreset.MIXED}),
                (
                    "NNCF mixed preset, full bias correction",
                    {"preset": nncf.QuantizationPreset.MIXED, "fast_bias_correction": False},
                ),
            ):
                record(recipe, _nncf(nncf, source, data, options))
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform_name()} ({threads} cores), VNNI {'yes' if has_vnni() else 'no'}",
        "model": args.model,
        "command": "python benchmark/int8_recipes.py " + " ".join(sys.argv[1:]),
        "held_out": len(samples.held_out),
        "split": samples.split,
        "rows": rows,
    }
    write_results(args.out, f"int8-recipes-{args.model}", results, markdown, plot)
    return 0


def _nncf(nncf: Any, source: Any, data: Any, options: dict[str, Any]) -> Callable[[], Any]:
    return lambda: nncf.quantize(source, data, subset_size=128, **options)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# INT8 recipes for {results['model']}, {results['date']}",
        "",
        f"Machine: {results['machine']}. Held-out set: {results['held_out']} inputs ({results['split']}). "
        f"Every graph runs on OpenVINO. Command: `{results['command']}`",
        "",
        "| recipe | top-1 agreement with fp32 | img/s (batch 8) | built in s |",
        "|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "error" in row:
            lines.append(f"| {row['recipe']} | failed: {row['error']} | - | - |")
        else:
            lines.append(
                f"| {row['recipe']} | {row['agreement']:.1%} | {row['img_per_s']:.1f} | {row['build_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["rows"] if "error" not in row]
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    axes.scatter([row["img_per_s"] for row in rows], [row["agreement"] * 100 for row in rows])
    for row in rows:
        axes.annotate(
            row["recipe"],
            (row["img_per_s"], row["agreement"] * 100),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    axes.axhline(99, color="grey", linestyle=":", label="optimize's default bound (1% disagreement)")
    axes.set_xlabel("images / s (batch 8, OpenVINO)")
    axes.set_ylabel("top-1 agreement with fp32, %")
    axes.set_title(f"{results['model']}: INT8 recipes, fidelity against speed")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
