"""OpenVINO backend: an ONNX (or OpenVINO IR) graph compiled for the CPU, fp32, bf16 or INT8 (from QDQ).

One stream and exactly the threads the server gives this instance: the batcher already supplies the
parallelism across requests, so more streams would only split the same cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchrest.backends.kind import BackendKind
from torchrest.errors import ModelLoadError, first_line

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can run natively here, e.g. ['FP32', 'INT8', 'BF16']."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINOBackend:
    def __init__(
        self, path: Path, *, threads: int = 1, precision: str = "fp32", device: str = "cpu", name: str = "openvino"
    ) -> None:
        import openvino as ov

        if device != "cpu":
            raise ModelLoadError(f"the openvino backend runs on the CPU here, not {device}")
        self.name = name
        self.device = device
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": PRECISIONS.get(precision, "f32"),
        }
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            raise ModelLoadError(f"OpenVINO cannot load {path}: {first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()

    def prepare_thread(self) -> None:
        pass

    def input_buffer(self, max_batch_size: int, size: int) -> np.ndarray:
        return np.empty((max_batch_size, size, size, 3), dtype=np.uint8)

    def run(self, batch: np.ndarray) -> np.ndarray:
        # the request's output memory is reused by the next call: the copy keeps this batch's answer
        outputs = self.request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
        return np.array(outputs[0], dtype=np.float32, copy=True)


def open_openvino(path: Path, *, device: str, threads: int, options: dict[str, str]) -> OpenVINOBackend:
    return OpenVINOBackend(
        path,
        device=device,
        threads=threads,
        precision=options.get("inference_precision", "fp32"),
        name=options.get("name", "openvino"),
    )


KIND = BackendKind("openvino", open_openvino, platform="openvino", model_format="openvino", packages=("openvino",))
