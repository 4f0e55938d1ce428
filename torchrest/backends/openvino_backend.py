"""OpenVINO backend: an ONNX (or OpenVINO IR) graph compiled for the CPU, fp32, bf16 or INT8 (from QDQ).

A model's instances are OpenVINO streams: with one instance, one stream of exactly the threads the server
gives it; with N, the instances share one graph compiled for N streams of those threads each, and each
instance runs its own infer request. (N graphs compiled apart, each told to use one thread, crowd onto
the same core: on a 2-core machine they answered half as much as one graph of two threads.)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from torchrest.backends.kind import BackendKind
from torchrest.errors import ModelLoadError, first_line

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can run natively here, e.g. ['FP32', 'INT8', 'BF16']."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class _Compiled:
    """One compiled graph, shared by the instances (streams) that hold it; gone when they all are."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled


_shared: weakref.WeakValueDictionary[tuple[object, ...], _Compiled] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


class OpenVINOBackend:
    def __init__(
        self,
        path: Path,
        *,
        threads: int = 1,
        precision: str = "fp32",
        device: str = "cpu",
        name: str = "openvino",
        streams: int = 1,
    ) -> None:
        if device != "cpu":
            raise ModelLoadError(f"the openvino backend runs on the CPU here, not {device}")
        self.name = name
        self.device = device
        self.path = path
        self.threads = threads
        self.precision = PRECISIONS.get(precision, "f32")
        self.streams = max(1, streams)
        self._graph = _compiled(path, threads, self.precision, self.streams)
        self.compiled = self._graph.compiled
        self.request = self.compiled.create_infer_request()
        self._alone: _Compiled | None = None

    def prepare_thread(self) -> None:
        pass

    def input_buffer(self, max_batch_size: int, size: tuple[int, int]) -> np.ndarray:
        return np.empty((max_batch_size, *size, 3), dtype=np.uint8)

    def alone(self, threads: int) -> Callable[[np.ndarray], tuple[np.ndarray, ...]] | None:
        """The graph compiled once more, for one stream of `threads` threads with the latency hint, shared
        by the model's instances (one of them runs it at a time); each instance has its own request."""
        if threads <= self.threads:
            return None
        self._alone = _compiled(self.path, threads, self.precision, 1, shared=True)
        request = self._alone.compiled.create_infer_request()
        return lambda batch: _infer(request, batch)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        return _infer(self.request, batch)


def _infer(request: Any, batch: np.ndarray) -> tuple[np.ndarray, ...]:
    # the request's output memory is reused by the next call: the copies keep this batch's answer
    outputs = request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
    return tuple(
        np.array(outputs[i], dtype=np.float32 if outputs[i].dtype.kind == "f" else None, copy=True)
        for i in range(len(outputs))
    )


def _compiled(path: Path, threads: int, precision: str, streams: int, shared: bool = False) -> _Compiled:
    """The graph compiled for `streams` streams of `threads` threads, shared while any instance holds it
    (one stream: compiled for this instance alone, as a restarted instance needs a fresh one, unless
    `shared`: the whole-budget graph the instances take turns on)."""
    import openvino as ov

    if streams == 1:
        config: dict[str, object] = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    else:
        config = {"NUM_STREAMS": streams}
    config |= {"INFERENCE_NUM_THREADS": threads * streams, "INFERENCE_PRECISION_HINT": precision}
    key = (str(Path(path).resolve()), path.stat().st_mtime_ns, threads, precision, streams)
    shared = shared or streams > 1
    with _shared_lock:
        if shared and (held := _shared.get(key)) is not None:
            return held
        try:
            core = ov.Core()
            graph = _Compiled(core.compile_model(core.read_model(str(path)), "CPU", config))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            raise ModelLoadError(f"OpenVINO cannot load {path}: {first_line(exc)}") from None
        if shared:
            _shared[key] = graph
        return graph


def open_openvino(path: Path, *, device: str, threads: int, options: dict[str, str]) -> OpenVINOBackend:
    return OpenVINOBackend(
        path,
        device=device,
        threads=threads,
        precision=options.get("inference_precision", "fp32"),
        name=options.get("name", "openvino"),
        streams=int(options.get("streams", "1")),
    )


KIND = BackendKind("openvino", open_openvino, platform="openvino", model_format="openvino", packages=("openvino",))
