"""ONNX Runtime backend: an ONNX graph (fp32 or INT8 QDQ) taking (N, H, W, 3) uint8 and returning logits,
or a user's ONNX file taking (N, 3, H, W) float, ImageNet-normalised (fed through backends.inputs),
with a dynamic batch dimension or a fixed one (then run in chunks of it).

The session owns exactly the threads the server gives this instance (intra-op pool, no inter-op pool),
and its workers do not spin between batches: the same cores decode the next batch in the meantime.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrest.backends.inputs import FLOAT_NCHW, UINT8_NHWC, Outputs, float_nchw, in_fixed_batches
from torchrest.backends.kind import BackendKind
from torchrest.errors import ModelLoadError, first_line
from torchrest.model_input import IMAGENET


class OnnxRuntimeBackend:
    def __init__(
        self, path: Path, *, device: str = "cpu", threads: int = 1, name: str = "onnxruntime", normalize: str = IMAGENET
    ) -> None:
        self.name = name
        self.normalize = normalize
        self.device = device
        self.path = path
        self.threads = threads
        self.session = self._session(threads)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.pixels = UINT8_NHWC if graph_input.type == "tensor(uint8)" else FLOAT_NCHW
        first = graph_input.shape[0] if graph_input.shape else None
        self.batch = first if isinstance(first, int) and first > 0 else 0  # 0: a dynamic batch dimension

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        device, path = self.device, self.path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            index = device.partition(":")[2] or "0"
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))  # type: ignore[arg-type]
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None

    def prepare_thread(self) -> None:
        pass

    def input_buffer(self, max_batch_size: int, size: tuple[int, int]) -> np.ndarray:
        return np.empty((max_batch_size, *size, 3), dtype=np.uint8)

    def alone(self, threads: int) -> Callable[[np.ndarray], Outputs] | None:
        """A second session of the same graph whose pool has `threads` threads (CPU), shared by the model's
        instances (one of them runs it at a time): one more copy of the weights per model, not per instance."""
        if self.device != "cpu" or threads <= self.threads:
            return None
        key = (str(self.path.resolve()), self.path.stat().st_mtime_ns, threads)
        with _alone_lock:
            held = _alone.get(key)
            if held is None:
                held = _alone[key] = _Session(self._session(threads))
        return lambda batch: self.run(batch, held.session)

    def run(self, batch: np.ndarray, session: Any = None) -> Outputs:
        if self.batch:
            return in_fixed_batches(lambda chunk: self._run(chunk, session), batch, self.batch)
        return self._run(batch, session)

    def _run(self, batch: np.ndarray, session: Any = None) -> Outputs:
        if self.pixels == FLOAT_NCHW:
            batch = float_nchw(torch.from_numpy(batch), self.normalize).numpy()
        outputs = (session or self.session).run(None, {self.input_name: batch})
        return tuple(np.asarray(o, dtype=np.float32) if o.dtype.kind == "f" else np.asarray(o) for o in outputs)


class _Session:
    """A session the instances share, kept while any of them holds it (weakly cached below)."""

    def __init__(self, session: Any) -> None:
        self.session = session


_alone: weakref.WeakValueDictionary[tuple[str, int, int], _Session] = weakref.WeakValueDictionary()
_alone_lock = threading.Lock()


def open_onnxruntime(path: Path, *, device: str, threads: int, options: dict[str, str]) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(
        path,
        device=device,
        threads=threads,
        name=options.get("name", "onnxruntime"),
        normalize=options.get("normalize", IMAGENET),
    )


KIND = BackendKind(
    "onnxruntime",
    open_onnxruntime,
    platform="onnxruntime_onnx",
    model_format="onnx",
    packages=("onnxruntime",),
    narrow=True,
)
