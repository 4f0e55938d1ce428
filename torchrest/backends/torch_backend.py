"""PyTorch backend: an eager `nn.Module` (or a TorchScript module wrapped in one) on CPU or CUDA.

On CPU the weights are stored channels-last, which is what the uint8 NHWC stem produces, and each
inference thread pins its own intra-op thread count. On CUDA the batch buffer is page-locked so the
host-to-device copy is a single DMA, the model runs in fp16, and only the logits come back.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchrest.backends.kind import BackendKind
from torchrest.errors import ModelLoadError, first_line

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; a CUDA request without CUDA is refused."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {requested} asked for, but this torch build sees no CUDA GPU")
        return requested
    if requested != "cpu":
        raise ModelLoadError(f"unknown device {requested!r}: use cpu, cuda, cuda:N or auto")
    return requested


class TorchBackend:
    def __init__(
        self,
        module: nn.Module,
        *,
        device: str = "cpu",
        precision: str | None = None,
        threads: int = 1,
        channels_last: bool = True,
        name: str = "torch_eager",
    ) -> None:
        self.name = name
        self.device = device
        self.threads = threads
        self.on_cuda = device.startswith("cuda")
        self.dtype = DTYPES[precision or ("fp16" if self.on_cuda else "fp32")]
        with warnings.catch_warnings():
            # a TorchScript submodule makes nn.Module.to() touch .grad of non-leaf tensors, harmlessly
            warnings.simplefilter("ignore", UserWarning)
            module = module.eval().to(device=device, dtype=self.dtype)
            if channels_last and not self.on_cuda:
                module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = module

    def prepare_thread(self) -> None:
        if self.on_cuda:
            index = torch.device(self.device).index  # None for plain "cuda": the current GPU
            torch.cuda.set_device(torch.cuda.current_device() if index is None else index)
        else:
            torch.set_num_threads(self.threads)

    def input_buffer(self, max_batch_size: int, size: int) -> np.ndarray:
        shape = (max_batch_size, size, size, 3)
        if self.on_cuda:
            return torch.empty(shape, dtype=torch.uint8).pin_memory().numpy()
        return np.empty(shape, dtype=np.uint8)

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(batch)
        if self.on_cuda:
            pixels = pixels.to(self.device, non_blocking=True)
        logits = self.module(pixels)
        return logits.float().cpu().numpy()


def open_torchscript(path: Path, *, device: str, threads: int, options: dict[str, str]) -> TorchBackend:
    """A TorchScript artifact written by `torchrest optimize`: it takes uint8 NHWC itself."""
    if options.get("requires") == "torch_tensorrt":
        try:
            import torch_tensorrt  # noqa: F401 - registers the TensorRT engine ops the artifact calls
        except ImportError:
            raise ModelLoadError(f"{path} is a TensorRT engine: pip install torch-tensorrt to serve it") from None
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a TorchScript model: {first_line(exc)}") from None
    if options.get("freeze") == "true":
        module = freeze(module)
    return TorchBackend(
        module,
        device=device,
        precision=options.get("precision"),
        threads=threads,
        channels_last=options.get("channels_last", "true") == "true",
        name=options.get("name", "torchscript"),
    )


def freeze(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Fold weights into the graph as constants and fuse for inference (conv+bn, oneDNN prepacking).

    Done at load time: a frozen module does not survive torch.jit.save/load in torch 2.13."""
    with torch.no_grad():
        return torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))


KIND = BackendKind("torch", open_torchscript, platform="pytorch_libtorch", model_format="pytorch", packages=("torch",))
