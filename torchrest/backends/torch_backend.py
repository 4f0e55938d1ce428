"""PyTorch backend: an eager `nn.Module` on CPU or CUDA: a built-in model, a torch.export program
(`.pt2`, what model folders and users' files hold), or a legacy TorchScript module.

On CPU the weights are stored channels-last, which is what the uint8 NHWC stem produces, and each
inference thread pins its own intra-op thread count. On CUDA the batch buffer is page-locked so the
host-to-device copy is a single DMA, the model runs in fp16, and only the logits come back.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchrest.backends.formats import EXPORTED, TORCHSCRIPT, TORCHSCRIPT_DEPRECATED, file_format
from torchrest.backends.inputs import FLOAT_NCHW, UINT8_NHWC, Outputs, Uint8Network, as_outputs, in_fixed_batches
from torchrest.backends.kind import BackendKind
from torchrest.errors import ModelLoadError, first_line
from torchrest.model_input import IMAGENET

log = logging.getLogger("torchrest.backends")

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


class OnTorchDevice:
    """What the backends that run torch tensors on a device share (TorchBackend, AOTIBackend): the
    inference thread's device or intra-op pool, a (page-locked, on CUDA) batch buffer, and a lone batch's
    wider pool."""

    device: str
    threads: int
    on_cuda: bool
    batch: int = 0  # 0: any batch size; else the model takes exactly this many images
    buckets: tuple[int, ...] = ()  # else: batches are padded up to one of these sizes

    def run(self, batch: np.ndarray) -> Outputs:
        if self.batch:
            return in_fixed_batches(self._run, batch, self.batch)
        if self.buckets:
            size = next((bucket for bucket in self.buckets if bucket >= len(batch)), self.buckets[-1])
            return in_fixed_batches(self._run, batch, size)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> Outputs:
        raise NotImplementedError

    def _on_device(self, batch: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(batch)
        return pixels.to(self.device, non_blocking=True) if self.on_cuda else pixels

    def prepare_thread(self) -> None:
        if self.on_cuda:
            index = torch.device(self.device).index  # None for plain "cuda": the current GPU
            torch.cuda.set_device(torch.cuda.current_device() if index is None else index)
        else:
            torch.set_num_threads(self.threads)  # torch's and a compiled package's OpenMP loops read it

    def input_buffer(self, max_batch_size: int, size: tuple[int, int]) -> np.ndarray:
        shape = (max_batch_size, *size, 3)
        if self.on_cuda:
            return torch.empty(shape, dtype=torch.uint8).pin_memory().numpy()
        return np.empty(shape, dtype=np.uint8)

    def alone(self, threads: int) -> Callable[[np.ndarray], Outputs] | None:
        """`run` with this thread's intra-op pool widened to `threads` for the call (CPU)."""
        return None if self.on_cuda or threads <= self.threads else with_threads(self.run, threads, self.threads)


class TorchBackend(OnTorchDevice):
    def __init__(
        self,
        module: nn.Module,
        *,
        device: str = "cpu",
        precision: str | None = None,
        threads: int = 1,
        channels_last: bool = True,
        name: str = "torch_eager",
        batch: int = 0,
        compile_mode: str = "",
        buckets: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.batch = batch
        self.buckets = tuple(sorted(buckets))  # with compile_mode
        self.device = device
        self.threads = threads
        self.on_cuda = device.startswith("cuda")
        self.dtype = DTYPES[precision or ("fp16" if self.on_cuda else "fp32")]
        with warnings.catch_warnings():
            # a TorchScript submodule makes nn.Module.to() touch .grad of non-leaf tensors, harmlessly
            warnings.simplefilter("ignore", UserWarning)
            module = eval_mode(module).to(device=device, dtype=self.dtype)
            if channels_last and not self.on_cuda:
                module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if compile_mode:  # Inductor kernels, one graph per bucket (and with "reduce-overhead" CUDA graphs of
            # each, recorded on the inference thread the first time it runs that bucket)
            module = torch.compile(module, mode=compile_mode, dynamic=False, fullgraph=True)  # type: ignore[assignment]
        self.module = module

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> Outputs:
        return as_outputs(self.module(self._on_device(batch)))


def with_threads(run: Callable[[np.ndarray], Outputs], threads: int, own: int) -> Callable[[np.ndarray], Outputs]:
    """`run` with this thread's intra-op pool at `threads` for the call, and back to `own` after it."""

    def widened(batch: np.ndarray) -> Outputs:
        torch.set_num_threads(threads)
        try:
            return run(batch)
        finally:
            torch.set_num_threads(own)

    return widened


def eval_mode(module: nn.Module) -> nn.Module:
    """`module.eval()` for a module that may hold a torch.export program (whose eval() raises: it was
    exported as it will run); every submodule's training flag is cleared."""
    for part in module.modules():
        part.training = False
    return module


def open_torch(path: Path, *, device: str, threads: int, options: dict[str, str]) -> TorchBackend:
    """A model folder's torch artifact: a torch.export program (taking uint8 NHWC, as optimize writes it,
    or a user's network taking float NCHW), or a legacy TorchScript module."""
    if options.get("requires") == "torch_tensorrt":
        try:
            import torch_tensorrt  # noqa: F401 - registers the TensorRT engine ops the program calls
        except ImportError:
            raise ModelLoadError(f"{path} holds TensorRT engines: pip install torch-tensorrt to serve it") from None
    if file_format(path) == TORCHSCRIPT:
        module, batch = load_torchscript(path), 0  # optimize's legacy artifacts took uint8 NHWC themselves
    else:
        module, batch, _ = load_exported(path, options.get("normalize", IMAGENET))
    return TorchBackend(
        module,
        device=device,
        precision=options.get("precision"),
        threads=threads,
        channels_last=options.get("channels_last", "true") == "true",
        name=options.get("name", "torch"),
        batch=batch,
        compile_mode=options.get("compile", ""),
        buckets=tuple(int(size) for size in options["buckets"].split(",")) if options.get("buckets") else (),
    )


def load_exported(path: Path, normalize: str = IMAGENET) -> tuple[nn.Module, int, tuple[int, int]]:
    """A torch.export program as a module that takes uint8 NHWC (a user's network, taking float NCHW, gets
    torchrest's stem in front of it, normalising as `normalize` says; a program with the stem inside is taken
    as it is), its batch size and its image's (height, width) (each 0 when dynamic)."""
    if file_format(path) != EXPORTED:
        raise ModelLoadError(f"{path} is not a torch.export program")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - deserialisation raises many types for a damaged or foreign file
        raise ModelLoadError(f"{path} is not a loadable torch.export program: {first_line(exc)}") from None
    inputs = program.graph_signature.user_inputs
    if len(inputs) != 1:
        raise ModelLoadError(f"{path} takes {len(inputs)} inputs; torchrest feeds a model one batch of images")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0])
    value = node.meta.get("val")
    shape = tuple(value.shape) if value is not None else ()
    if len(shape) != 4:
        raise ModelLoadError(f"{path} takes a tensor of shape {list(shape)}, not a batch of images")
    pixels = UINT8_NHWC if value.dtype == torch.uint8 and shape[3] == 3 else FLOAT_NCHW
    batch = 0 if isinstance(shape[0], torch.SymInt) else int(shape[0])
    height, width = shape[1:3] if pixels == UINT8_NHWC else shape[2:4]
    size = tuple(0 if isinstance(side, torch.SymInt) else int(side) for side in (height, width))
    module = _owning_constants(program.module())
    return (Uint8Network(module, normalize) if pixels == FLOAT_NCHW else module), batch, (size[0], size[1])


def _owning_constants(module: nn.Module) -> nn.Module:
    """A loaded program's lifted constants are views into the file's storage: each gets its own copy, or
    exporting the module again (optimize's candidates) fails ("Can't detach views in-place")."""
    for name, value in list(vars(module).items()):
        if isinstance(value, torch.Tensor) and value._is_view():
            setattr(module, name, value.clone())
    for name, buffer in list(module.named_buffers(recurse=False)):
        if buffer._is_view():
            module.register_buffer(name, buffer.clone())
    return module


def load_torchscript(path: Path) -> nn.Module:
    """Legacy: PyTorch has deprecated TorchScript (torch.jit.load warns, and may one day refuse)."""
    log.warning("%s: %s", path, TORCHSCRIPT_DEPRECATED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # said once above, in words a user can act on
            module: nn.Module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a TorchScript model: {first_line(exc)}") from None
    return module


KIND = BackendKind("torch", open_torch, platform="pytorch_libtorch", model_format="pytorch", packages=("torch",))
