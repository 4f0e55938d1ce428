"""AOTInductor backend: a `.pt2` package of kernels compiled ahead of time (torch.export + Inductor), run
through the C interface the package's shared library exports, one model container per instance.

Why not `torch._inductor.aoti_load_package`: its runner is called through pybind with the GIL held for the
whole inference (measured: a Python thread beside it ran 4% of its usual speed), so the event loop, the
decode threads and the other instances all stop while a batch runs. The package's library declares a C ABI
(torch/csrc/inductor/aoti_runtime/interface.h); called through ctypes the GIL is released, and torch
converts tensors to and from the handles it takes (torch._C._aoti). Each instance opens its own copy of the
library and its own container, so instances run at once, each on the threads the server gives it.

A package is tied to what it was compiled for (formats.CompiledFor): on a machine it does not fit it is a
one-line error, or, where the model folder holds the portable exported program beside it, that is served
instead and the log says why.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path

import numpy as np
import torch

from torchrest.backends import torch_backend
from torchrest.backends.formats import CompiledFor
from torchrest.backends.inputs import FLOAT_NCHW, UINT8_NHWC, Outputs, as_outputs, float_nchw
from torchrest.backends.kind import BackendKind
from torchrest.backends.torch_backend import OnTorchDevice
from torchrest.errors import ModelLoadError
from torchrest.model_input import IMAGENET

log = logging.getLogger("torchrest.backends")

PROBE_BATCH = 8  # a user's package says nothing of its batch dimension: run this many once and see

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule = ctypes.pythonapi.PyCapsule_New
_capsule.restype = ctypes.py_object
_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class AOTIBackend(OnTorchDevice):
    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        threads: int = 1,
        pixels: str = UINT8_NHWC,
        normalize: str = IMAGENET,
        batch: int = 0,
        name: str = "aoti",
    ) -> None:
        self.name = name
        self.device = device
        self.threads = threads
        self.on_cuda = device.startswith("cuda")
        self.pixels = pixels
        self.normalize = normalize
        self._folder = Path(tempfile.mkdtemp(prefix="torchrest-aoti-"))
        weakref.finalize(self, shutil.rmtree, self._folder, True)
        library = _extract(path, self._folder)
        self._lib = ctypes.CDLL(str(library))  # its own copy: a container of its own, nothing shared
        run = self._lib.AOTInductorModelContainerRun
        run.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        run.argtypes += [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
        self._container = ctypes.c_void_p()
        where = device if self.on_cuda else "cpu"
        self._check(
            self._lib.AOTInductorModelContainerCreateWithDevice(
                ctypes.byref(self._container), ctypes.c_size_t(1), where.encode(), str(library.parent).encode()
            ),
            f"cannot create a model container from {path}",
        )
        weakref.finalize(self, self._lib.AOTInductorModelContainerDelete, self._container)
        count = ctypes.c_size_t()
        self._lib.AOTInductorModelContainerGetNumInputs(self._container, ctypes.byref(count))
        if count.value != 1:
            raise ModelLoadError(f"{path} takes {count.value} inputs; torchrest feeds a model one batch of images")
        self._lib.AOTInductorModelContainerGetNumOutputs(self._container, ctypes.byref(count))
        self._outputs = count.value
        self.batch = batch  # 0: any batch size (a dynamic batch dimension); else chunks of it

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> Outputs:
        pixels = self._on_device(batch)
        if self.pixels == FLOAT_NCHW:
            pixels = float_nchw(pixels, self.normalize)
        (handle,) = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors([pixels.contiguous()])
        inputs = (ctypes.c_void_p * 1)(_capsule_pointer(handle, None))  # the container takes ownership
        outputs = (ctypes.c_void_p * self._outputs)()
        self._check(
            self._lib.AOTInductorModelContainerRun(self._container, inputs, 1, outputs, self._outputs, None, None),
            "the AOTInductor model failed",
            error=RuntimeError,
        )
        tensors = torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_capsule(p, None, None) for p in outputs])
        return as_outputs(tensors)

    def probe_batch(self, size: tuple[int, int]) -> None:
        """A user's package: find whether it takes any batch size or a fixed one (compiled without a
        dynamic batch dimension, it answers as many rows as it was compiled for)."""
        self.prepare_thread()
        rows = len(self._run(np.zeros((PROBE_BATCH, *size, 3), np.uint8))[0])
        self.batch = 0 if rows == PROBE_BATCH else rows
        if self.batch:
            log.info("%s takes a fixed batch of %d: batches are run in chunks of that size", self.name, self.batch)

    def _check(self, code: int, what: str, error: type[Exception] = ModelLoadError) -> None:
        if code != 0:
            last = getattr(self._lib, "AOTInductorGetLastError", None)
            detail = ""
            if last is not None:
                last.restype = ctypes.c_char_p
                lines = (last() or b"").decode(errors="replace").strip().splitlines()
                detail = f": {lines[0]}" if lines else ""
            raise error(f"{what} (AOTInductor error {code}){detail}")


def _extract(path: Path, folder: Path) -> Path:
    """The package's model library (and, for CUDA, its kernels' binaries) unpacked into `folder`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if "/data/aotinductor/" in n]
            models = sorted({n.split("/data/aotinductor/")[1].split("/")[0] for n in names})
            model = "model" if "model" in models else (models[0] if models else "")
            mine = [n for n in names if f"/data/aotinductor/{model}/" in n]
            libraries = [n for n in mine if n.endswith(".so")]
            if len(libraries) != 1:
                raise ModelLoadError(f"{path} is not an AOTInductor package with one model library")
            if any("/data/constants/" in n or "/data/weights/" in n for n in archive.namelist()):
                raise ModelLoadError(f"{path} keeps its weights outside its library: compile it with them inside")
            for name in mine:
                target = folder / Path(name).name
                target.write_bytes(archive.read(name))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path} is not a readable AOTInductor package: {exc}") from None
    return folder / Path(libraries[0]).name


def open_aoti(path: Path, *, device: str, threads: int, options: dict[str, str]) -> object:
    """A model folder's (or a user's) AOTInductor package; the portable program beside it where the
    package does not fit this machine."""
    compiled = CompiledFor.read(path, options.get("torch", ""))
    misfit = compiled.misfit(device)
    if misfit is not None:
        portable = options.get("portable", "")
        if portable and (path.parent / portable).is_file():
            log.warning("%s does not fit this machine (%s): serving the portable %s instead", path, misfit, portable)
            portable_options = {k: v for k, v in options.items() if k not in ("torch", "portable", "batch")}
            portable_options["name"] = f"{options.get('name', 'aoti')}-portable"
            fallback = path.parent / portable
            return torch_backend.open_torch(fallback, device=device, threads=threads, options=portable_options)
        raise ModelLoadError(f"{path} does not fit this machine: {misfit}; compile it here or serve the exported .pt2")
    backend = AOTIBackend(
        path,
        device=device,
        threads=threads,
        pixels=options.get("pixels", UINT8_NHWC),
        batch=int(options.get("batch", "0")),
        normalize=options.get("normalize", IMAGENET),
        name=options.get("name", "aoti"),
    )
    if "batch" not in options and "input" in options:  # a user's package: nothing says how it batches
        height, _, width = options["input"].partition("x")
        backend.probe_batch((int(height), int(width)))
    return backend


KIND = BackendKind("aoti", open_aoti, platform="torch_aoti", model_format="pytorch", packages=("torch",))
