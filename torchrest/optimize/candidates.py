"""The candidates optimize tries: each one a route from the fp32 torch model to a faster Backend.

A candidate says why it cannot run here (a missing package, a CPU without bf16, the wrong device)
before anything is built, and otherwise builds its Backend plus the artifact a model folder would hold.
Expensive intermediate forms (the torch.export program, the ONNX export, the INT8 QDQ graph) are made once
in the `Context` and shared by every candidate that needs them:

    module --torch.export (dynamic batch)--> program .pt2 --> torch candidates' artifact
                                                          --> AOTInductor package (freezing)
                                                          --> ONNX (dynamo exporter) --> OpenVINO, ONNX Runtime, INT8
    a legacy TorchScript model cannot be exported: traced instead, and ONNX takes the old exporter

A new candidate is one `Candidate(...)` line in `CANDIDATES` and, when it needs a new form, one
Context method.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchrest.backends import (
    Backend,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    missing_package,
)
from torchrest.backends.aoti_backend import KIND as AOTI
from torchrest.backends.aoti_backend import AOTIBackend
from torchrest.backends.openvino_backend import KIND as OPENVINO
from torchrest.backends.openvino_backend import cpu_capabilities
from torchrest.backends.ort_backend import KIND as ONNXRUNTIME
from torchrest.backends.torch_backend import KIND as TORCH
from torchrest.backends.torch_backend import eval_mode
from torchrest.errors import first_line
from torchrest.export import ONNX_NAMES, export_failure, export_program, quiet, to_onnx
from torchrest.optimize.gates import CHUNK, Gate, Outputs
from torchrest.optimize.mixed import RANKING_INPUTS, MixedSearch, search_float_layers

log = logging.getLogger("torchrest.optimize")

REFERENCE = "torch-eager"
CALIBRATION_BATCH = 16
PORTABLE = "exported.pt2"  # beside an AOTInductor package in a model folder: served where the package cannot be


@dataclass
class Context:
    """What every candidate builds from, and the forms they share."""

    module: nn.Module  # fp32, uint8 NHWC in, the outputs the model's tasks read out
    size: tuple[int, int]  # the input's (height, width)
    device: str
    threads: int
    workdir: Path
    calibration: np.ndarray
    gate: Gate  # the model's tasks and their bounds: what a candidate must meet
    held_out: np.ndarray | None = None  # what the accuracy-aware INT8 search checks its bound on
    outputs: int = 1  # how many outputs the module gives (the tasks read them in order)
    progress: Callable[[str], None] = lambda text: None  # what the candidate being built is doing
    mixed: dict[str, MixedSearch] = field(default_factory=dict)  # the INT8 search, by the runtime it judged on
    _forms: dict[str, Path] = field(default_factory=dict)
    _weighted: list[str] = field(default_factory=list)
    _compile_s: float = 0.0

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def module_copy(self) -> nn.Module:
        """For backends that convert weights in place (layout, dtype); export reads `module`."""
        return eval_mode(copy.deepcopy(self.module))

    def example(self, device: str = "cpu") -> torch.Tensor:
        return torch.zeros((2, *self.size, 3), dtype=torch.uint8, device=device)

    def exported(self, precision: str = "fp32") -> Path:
        """The module as a torch.export program in `precision` (fp32 on the CPU, fp16 on the GPU, bf16),
        with a dynamic batch dimension: the torch candidates' artifact, and what ONNX and AOTInductor
        start from. A legacy TorchScript model cannot be exported: it is traced instead."""
        key = f"exported-{precision}"
        if key not in self._forms:
            device = self.device if precision == "fp16" else "cpu"
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            module = self.module if precision == "fp32" else self.module_copy().to(device=device, dtype=dtype)
            if holds_torchscript(module):
                self._forms[key] = self._legacy_traced(module, device, precision)
            else:
                path = self.workdir / f"model-{precision}.pt2"
                torch.export.save(export_program(module, self.example(device)), str(path))
                self._forms[key] = path
        return self._forms[key]

    def program(self, precision: str = "fp32") -> torch.export.ExportedProgram:
        """The exported program itself (ExportedProgram), read back from `exported`."""
        path = self.exported(precision)
        if path.suffix != ".pt2":
            raise RuntimeError("a TorchScript model cannot be exported with torch.export: bring it as a .pt2")
        return torch.export.load(str(path))

    def _legacy_traced(self, module: nn.Module, device: str, precision: str) -> Path:
        with torch.inference_mode(False), torch.no_grad(), quiet():
            traced = torch.jit.trace(module, self.example(device), check_trace=False)
            path = self.workdir / f"model-{precision}.pt"
            traced.save(str(path))
        return path

    def aoti(self) -> tuple[Path, float]:
        """The fp32 (CPU) or fp16 (CUDA) program compiled by AOTInductor with freezing on (weights folded
        into the kernels), its batch dimension still dynamic; and the seconds the compile took."""
        if "aoti" not in self._forms:
            program = self.program("fp16" if self.on_cuda else "fp32")
            path = self.workdir / "model-aoti.pt2"
            started = time.perf_counter()
            with torch.no_grad(), quiet():
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(path), inductor_configs={"freezing": True}
                )
            self._forms["aoti"] = path
            self._compile_s = time.perf_counter() - started
        return self._forms["aoti"], self._compile_s

    def onnx(self) -> Path:
        """ONNX (opset 18) with a dynamic batch dimension: the dynamo exporter from the exported program;
        the old TorchScript-based exporter only where that fails (a legacy TorchScript model, an operator
        the new one lacks), and the log says why."""
        if "onnx" not in self._forms:
            path = self.workdir / "model.onnx"
            try:
                to_onnx(self.program(), self.example(), path, self.output_names)
            except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the fallback says which
                log.info("ONNX: the dynamo exporter failed (%s); trying the old exporter", export_failure(exc))
                try:
                    self._legacy_onnx(path)
                except Exception as old:  # noqa: BLE001
                    reason = f"ONNX export failed: {export_failure(exc)} (old exporter: {first_line(old)})"
                    raise RuntimeError(reason) from None
            self._forms["onnx"] = path
        return self._forms["onnx"]

    def _legacy_onnx(self, path: Path) -> None:
        # the old exporter cannot re-trace through a ScriptModule inside an nn.Module: it takes the traced one
        with torch.no_grad(), quiet():
            module = torch.jit.load(str(self.exported())) if holds_torchscript(self.module) else self.module
            torch.onnx.export(
                module,
                (self.example(),),
                str(path),
                dynamo=False,
                dynamic_axes={"pixels": {0: "batch"}} | {name: {0: "batch"} for name in self.output_names},
                do_constant_folding=True,
                output_names=self.output_names,
                **ONNX_NAMES,
            )

    @property
    def output_names(self) -> list[str]:
        """The ONNX graph's outputs: "logits" for a classifier's one, else output_0, output_1, ..."""
        return ["logits"] if self.outputs == 1 else [f"output_{index}" for index in range(self.outputs)]

    def onnx_int8(self, keep_float: list[str] | None = None, path: Path | None = None) -> Path:
        """Static INT8 post-training quantization of the ONNX graph, in QDQ form, calibrated here.

        Weights per channel (symmetric int8), activations per tensor (asymmetric uint8, min-max over
        the calibration set). The first convolution and the classifier stay in float: they see the raw
        pixels and produce the logits, where 8 bits cost the most agreement. Without VNNI, x86 int8
        kernels (VPMADDUBSW) can saturate, so weights are reduced to 7 bits there, as ONNX Runtime
        advises.

        `keep_float` names more layers to leave in float (the accuracy-aware search): the ranges are
        calibrated once and cached, so each such graph is a rewrite, not a new calibration.
        """
        if keep_float is None and "onnx-int8" in self._forms:
            return self._forms["onnx-int8"]
        prepared, _ = self.quantizable()
        out = path or self.workdir / "model-int8.onnx"
        static_int8(
            prepared,
            out,
            self.calibration,
            [*self.always_float(), *(keep_float or [])],
            calibration_cache_path=str(self.workdir / "int8-ranges.json"),
        )
        if keep_float is None:
            self._forms["onnx-int8"] = out
        return out

    def quantizable(self) -> tuple[Path, list[str]]:
        """The ONNX graph prepared for quantization (shapes inferred) and its weighted layers, in order."""
        if "onnx-prepared" not in self._forms:
            import onnx
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = self.workdir / "model-prepared.onnx"
            with quiet():
                quant_pre_process(str(self.onnx()), str(prepared), skip_symbolic_shape=True)
            self._forms["onnx-prepared"] = prepared
            self._weighted = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in WEIGHTED_OPS]
        return self._forms["onnx-prepared"], self._weighted

    def always_float(self) -> list[str]:
        _, weighted = self.quantizable()
        return [weighted[0], weighted[-1]] if len(weighted) > 2 else []

    def onnx_int8_mixed(self, runtime: str) -> Path:
        """The INT8 graph with the fewest layers kept in float that meets the bound when `runtime` runs it
        (torchrest.optimize.mixed); the whole-graph one when it already does. The layers' harm is ranked
        once, with the first runtime searched; each runtime then finds its own count (their INT8 kernels
        round differently)."""
        key = f"onnx-int8-mixed-{runtime}"
        if key not in self._forms:
            held_out = self.held_out
            assert held_out is not None, "the accuracy-aware search checks its bound on the held-out set"
            _, weighted = self.quantizable()
            always = set(self.always_float())
            layers = [layer for layer in weighted if layer not in always]
            opened = self._quick_runner(runtime)
            gate = self.gate
            ranking = self.calibration[:RANKING_INPUTS]
            calibration_reference = opened(self.onnx())(ranking)
            held_out_reference = gate.run(opened(self.onnx()), held_out)

            def judge(path: Path) -> tuple[float, bool]:
                verdicts = gate.judge(held_out_reference, gate.run(opened(path), held_out))
                return verdicts[0].value, all(verdict.passed for verdict in verdicts)

            ranked_before = next(iter(self.mixed.values()), None)
            path, self.mixed[runtime] = search_float_layers(
                layers,
                lambda keep, at: self.onnx_int8(keep, at),
                lambda graph: gate.harm(calibration_reference, opened(graph)(ranking)),
                judge,
                gate.criterion,
                self.workdir / runtime,
                self.progress,
                harm=ranked_before.harm if ranked_before is not None and ranked_before.harm else None,
            )
            self._forms[key] = path
        return self._forms[key]

    def _quick_runner(self, runtime: str) -> Callable[[Path], Callable[[np.ndarray], Outputs]]:
        """ONNX graph -> a function of inputs giving its outputs on `runtime` (openvino or onnxruntime), the
        graph opened once and run a chunk at a time."""

        def opened(path: Path) -> Callable[[np.ndarray], Outputs]:
            if runtime == OPENVINO.name:
                backend: Backend = OpenVINOBackend(path, threads=self.threads, precision="fp32")
            else:
                backend = OnnxRuntimeBackend(path, device="cpu", threads=self.threads)
            backend.prepare_thread()

            def run(inputs: np.ndarray) -> Outputs:
                parts = [backend.run(inputs[at : at + CHUNK]) for at in range(0, len(inputs), CHUNK)]
                return tuple(np.concatenate(outputs) for outputs in zip(*parts, strict=True))

            return run

        return opened


WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}


def static_int8(prepared: Path, out: Path, calibration: np.ndarray, keep_float: list[str], **options: Any) -> Path:
    """ONNX Runtime's static quantization to QDQ, the recipe `Context.onnx_int8` documents; `options` are
    more of quantize_static's arguments (a calibration method, a cache of ranges)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings: dict[str, Any] = {"calibrate_method": CalibrationMethod.MinMax, **options}
    with quiet():
        quantize_static(
            str(prepared),
            str(out),
            _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=not has_vnni(),
            nodes_to_exclude=keep_float,
            **settings,
        )
    return out


@dataclass(frozen=True, slots=True)
class Built:
    backend: Backend | None  # None once measured: only the artifact is kept
    artifact: Path
    kind: str  # the serving backend that opens the artifact (a key of torchrest.backends.BACKENDS)
    options: dict[str, str] = field(default_factory=dict)
    detail: str = ""  # how it was made, when that is worth a line in the report (the layers kept in float)
    companions: dict[str, Path] = field(default_factory=dict)  # more files beside the artifact, by name


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    precision: str
    route: str  # how it is made, for the report
    unavailable: Callable[[Context], str | None]  # the reason it cannot run here, or None
    build: Callable[[Context], Built]


# --- availability -----------------------------------------------------------------------------------


def cpu_only(ctx: Context) -> str | None:
    return f"runs on the CPU; --device is {ctx.device}" if ctx.on_cuda else None


def cuda_only(ctx: Context) -> str | None:
    return None if ctx.on_cuda else "needs --device cuda"


def torch_bf16(ctx: Context) -> str | None:
    if ctx.on_cuda:
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "this CPU has no native bf16 (oneDNN needs AVX512-BF16 or AMX); emulated bf16 is slower than fp32"
    return None


def onnxruntime_here(ctx: Context) -> str | None:
    if reason := ONNXRUNTIME.missing():
        return reason
    if ctx.on_cuda:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


def openvino_here(ctx: Context) -> str | None:
    return OPENVINO.missing() or cpu_only(ctx)


def openvino_bf16(ctx: Context) -> str | None:
    if reason := openvino_here(ctx):
        return reason
    capabilities = cpu_capabilities()
    return None if "BF16" in capabilities else f"this CPU has no native bf16 (OpenVINO: {', '.join(capabilities)})"


def int8_here(ctx: Context) -> str | None:
    if reason := missing_package("onnx") or ONNXRUNTIME.missing():
        return f"INT8 quantization needs onnx and onnxruntime: {reason}"
    return cpu_only(ctx)


def openvino_int8(ctx: Context) -> str | None:
    return int8_here(ctx) or openvino_here(ctx)


def tensorrt_here(ctx: Context) -> str | None:
    return cuda_only(ctx) or missing_package("torch_tensorrt") or exportable(ctx)


def exportable(ctx: Context) -> str | None:
    if holds_torchscript(ctx.module):
        return "a TorchScript model cannot be exported with torch.export: bring the model as a .pt2"
    return None


def holds_torchscript(module: nn.Module) -> bool:
    return any(isinstance(part, torch.jit.ScriptModule) for part in module.modules())


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


# --- builders ---------------------------------------------------------------------------------------


def eager(channels_last: bool, name: str) -> Callable[[Context], Built]:
    def build(ctx: Context) -> Built:
        backend = TorchBackend(
            ctx.module_copy(), device=ctx.device, threads=ctx.threads, channels_last=channels_last, name=name
        )
        options = {"channels_last": str(channels_last).lower()}
        return Built(backend, ctx.exported(), TORCH.name, options)

    return build


def aoti(ctx: Context) -> Built:
    """The AOTInductor package is the artifact, the portable program beside it (served where the package
    does not fit: another torch, another CPU)."""
    path, seconds = ctx.aoti()
    options = {"torch": torch.__version__, "batch": "0", "portable": PORTABLE, "name": "aoti"}
    backend = AOTIBackend(path, device=ctx.device, threads=ctx.threads)
    portable = ctx.exported("fp16" if ctx.on_cuda else "fp32")
    return Built(backend, path, AOTI.name, options, f"compiled in {seconds:.0f} s", {PORTABLE: portable})


def torch_lower_precision(precision: str) -> Callable[[Context], Built]:
    def build(ctx: Context) -> Built:
        backend = TorchBackend(
            ctx.module_copy(), device=ctx.device, precision=precision, threads=ctx.threads, name=f"torch-{precision}"
        )
        return Built(backend, ctx.exported(precision), TORCH.name, {"channels_last": "true"})

    return build


def onnxruntime_fp32(ctx: Context) -> Built:
    return Built(OnnxRuntimeBackend(ctx.onnx(), device=ctx.device, threads=ctx.threads), ctx.onnx(), ONNXRUNTIME.name)


def onnxruntime_int8(ctx: Context) -> Built:
    path = ctx.onnx_int8()
    return Built(OnnxRuntimeBackend(path, device=ctx.device, threads=ctx.threads), path, ONNXRUNTIME.name)


def onnxruntime_int8_mixed(ctx: Context) -> Built:
    path = ctx.onnx_int8_mixed(ONNXRUNTIME.name)
    backend = OnnxRuntimeBackend(path, device=ctx.device, threads=ctx.threads)
    return Built(backend, path, ONNXRUNTIME.name, detail=_mixed_detail(ctx, ONNXRUNTIME.name))


def openvino(precision: str, int8: str = "") -> Callable[[Context], Built]:
    """`int8`: "" (float graph), "whole" (every layer but the first and last in INT8) or "mixed"."""

    def build(ctx: Context) -> Built:
        if int8 == "mixed":
            path = ctx.onnx_int8_mixed(OPENVINO.name)
        else:
            path = ctx.onnx_int8() if int8 == "whole" else ctx.onnx()
        backend = OpenVINOBackend(path, threads=ctx.threads, precision=precision)
        detail = _mixed_detail(ctx, OPENVINO.name) if int8 == "mixed" else ""
        return Built(backend, path, OPENVINO.name, {"inference_precision": precision}, detail)

    return build


def _mixed_detail(ctx: Context, runtime: str) -> str:
    return ctx.mixed[runtime].summary() if runtime in ctx.mixed else ""


COMPILE_BUCKETS = "1,4,16,64"


def torch_compiled(ctx: Context) -> Built:
    """The fp16 exported program under torch.compile with CUDA graphs ("reduce-overhead"): a graph per
    batch bucket, each batch padded up to the next bucket; compiled when the server starts, not saved."""
    options = {"channels_last": "false", "compile": "reduce-overhead", "buckets": COMPILE_BUCKETS}
    path = ctx.exported("fp16")
    backend = TORCH.open(path, device=ctx.device, threads=ctx.threads, options=options | {"precision": "fp16"})
    return Built(backend, path, TORCH.name, options)


def tensorrt(ctx: Context) -> Built:
    """Torch-TensorRT's dynamo front-end on the exported program; saved as an exported program that calls
    the engines (serving it imports torch_tensorrt)."""
    import torch_tensorrt

    height, width = ctx.size
    spec = torch_tensorrt.Input(
        min_shape=(1, height, width, 3),
        opt_shape=(8, height, width, 3),
        max_shape=(64, height, width, 3),
        dtype=torch.uint8,
    )
    with torch.no_grad(), quiet():
        compiled = torch_tensorrt.dynamo.compile(
            ctx.program("fp16"), inputs=[spec], enabled_precisions={torch.half}, min_block_size=1
        )
        path = ctx.workdir / "model-tensorrt.pt2"
        torch_tensorrt.save(compiled, str(path), output_format="exported_program", inputs=[ctx.example(ctx.device)])
    options = {"channels_last": "false", "requires": "torch_tensorrt"}
    backend = TORCH.open(path, device=ctx.device, threads=ctx.threads, options=options | {"name": "tensorrt"})
    return Built(backend, path, TORCH.name, options)


CANDIDATES: list[Candidate] = [
    Candidate(REFERENCE, "fp32", "torch eager, as loaded (the reference)", lambda ctx: None, eager(False, REFERENCE)),
    Candidate(
        "torch-channels-last",
        "fp32",
        "torch eager, channels-last weights",
        lambda ctx: None,
        eager(True, "torch-channels-last"),
    ),
    Candidate(
        "aoti",
        "fp32",
        "torch.export + AOTInductor, freezing on, dynamic batch (fp16 on CUDA)",
        exportable,
        aoti,
    ),
    Candidate(
        "torch-bf16", "bf16", "torch eager, weights converted to bf16", torch_bf16, torch_lower_precision("bf16")
    ),
    Candidate("torch-fp16", "fp16", "torch eager on CUDA, fp16 weights", cuda_only, torch_lower_precision("fp16")),
    Candidate(
        "torch-compile-cudagraphs",
        "fp16",
        f"torch.compile with CUDA graphs over batch buckets {COMPILE_BUCKETS.replace(',', ', ')}, fp16",
        lambda ctx: cuda_only(ctx) or exportable(ctx),
        torch_compiled,
    ),
    Candidate(
        "tensorrt", "fp16", "torch_tensorrt dynamo front-end on the exported program, fp16", tensorrt_here, tensorrt
    ),
    Candidate("onnxruntime-fp32", "fp32", "ONNX export, ONNX Runtime", onnxruntime_here, onnxruntime_fp32),
    Candidate("openvino-fp32", "fp32", "ONNX export, OpenVINO CPU", openvino_here, openvino("fp32")),
    Candidate(
        "openvino-bf16",
        "bf16",
        "ONNX export, OpenVINO CPU with bf16 inference precision",
        openvino_bf16,
        openvino("bf16"),
    ),
    Candidate("onnxruntime-int8", "int8", "static INT8 QDQ (calibrated), ONNX Runtime", int8_here, onnxruntime_int8),
    Candidate(
        "openvino-int8",
        "int8",
        "static INT8 QDQ (calibrated), OpenVINO CPU",
        openvino_int8,
        openvino("fp32", int8="whole"),
    ),
    Candidate(
        "onnxruntime-int8-mixed",
        "int8",
        "static INT8 QDQ, the layers that break fidelity kept in float (accuracy-aware search), ONNX Runtime",
        int8_here,
        onnxruntime_int8_mixed,
    ),
    Candidate(
        "openvino-int8-mixed",
        "int8",
        "static INT8 QDQ, the layers that break fidelity kept in float (accuracy-aware search), OpenVINO CPU",
        openvino_int8,
        openvino("fp32", int8="mixed"),
    ),
]
CANDIDATE_NAMES = [candidate.name for candidate in CANDIDATES]


def candidate_table() -> str:
    """docs/optimize.md's table of candidates, generated from the list above."""
    rows = ["| candidate | precision | route |", "| --- | --- | --- |"]
    rows += [f"| `{c.name}` | {c.precision} | {c.route} |" for c in CANDIDATES]
    return "\n".join(rows)


class _CalibrationReader:
    """Feeds the calibration set to ONNX Runtime's calibrator, a batch at a time."""

    def __init__(self, calibration: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = (
            calibration[start : start + CALIBRATION_BATCH] for start in range(0, len(calibration), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}
