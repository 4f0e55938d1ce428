"""What a model file holds, read from its contents (a suffix says little: `.pt` and `.pt2` are both zip
archives), and what a compiled one is tied to.

    model file -> file_format: exported-program (torch.export, portable: runs wherever this torch runs)
                               aotinductor      (compiled: tied to a torch version, a device, a CPU ISA)
                               torchscript      (legacy: PyTorch has deprecated it)
                               onnx
    aotinductor package -> CompiledFor (from its metadata) -> misfit(here) -> None or the one-line reason
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from torchrest.errors import ModelLoadError

EXPORTED = "exported-program"
AOTI = "aotinductor"
TORCHSCRIPT = "torchscript"
ONNX = "onnx"

TORCHSCRIPT_DEPRECATED = (
    "TorchScript is deprecated by PyTorch and will stop loading in a future release: "
    "export the model with torch.export and serve the .pt2 (docs/serving.md, 'Model files')"
)

# AOTInductor's names for the CPU features its kernels use -> the /proc/cpuinfo flags they need
ISA_FLAGS = {
    "AVX2": ("avx2", "fma"),
    "AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
    "AMX_TILE": ("amx_tile",),
    "AMX_BF16": ("amx_bf16",),
    "AMX_INT8": ("amx_int8",),
    "AMX_FP16": ("amx_fp16",),
    "AVX512_FP16": ("avx512_fp16",),
}


def file_format(path: Path) -> str:
    """One of EXPORTED, AOTI, TORCHSCRIPT, ONNX; ModelLoadError (one line) for anything else."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = None
    if names is None:
        if _looks_like_onnx(path):
            return ONNX
        raise ModelLoadError(f"{path} is not a model file torchrest reads (.pt2, ONNX or TorchScript)")
    if any("/data/aotinductor/" in name for name in names):
        return AOTI
    if any(name.endswith("/models/model.json") or name.endswith("serialized_exported_program.json") for name in names):
        return EXPORTED
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return TORCHSCRIPT
    raise ModelLoadError(f"{path} is a zip archive, but not a torch.export program, AOTInductor package or TorchScript")


def _looks_like_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - onnx raises protobuf's untyped errors for what is not ONNX
        return False
    return len(model.graph.input) > 0 and len(model.graph.node) > 0  # protobuf parses some junk as empty


@dataclass(frozen=True, slots=True)
class CompiledFor:
    """What an AOTInductor package was compiled for: its metadata, and the torch that compiled it when
    the model folder's config.json recorded it (a package does not say)."""

    device: str  # cpu, cuda
    isa: tuple[str, ...]  # AOTInductor's names, e.g. ("AVX512", "AVX512_VNNI", "AMX_TILE")
    torch_version: str = ""

    @classmethod
    def read(cls, path: Path, torch_version: str = "") -> CompiledFor:
        metadata = aoti_metadata(path)
        isa = tuple(metadata.get("AOTI_CPU_ISA", "").split())
        return cls(metadata.get("AOTI_DEVICE_KEY", "cpu"), isa, torch_version)

    def misfit(self, device: str) -> str | None:
        """None when it runs here, else why not (one line)."""
        if self.torch_version and self.torch_version != torch.__version__:
            return f"compiled with torch {self.torch_version}, this is torch {torch.__version__}"
        wanted = "cuda" if device.startswith("cuda") else "cpu"
        if self.device != wanted:
            return f"compiled for {self.device}, served on {device}"
        missing = [name for name in self.isa if not cpu_has(name)]
        if missing:
            return f"compiled for a CPU with {' '.join(missing)}, which this one lacks"
        return None

    def describe(self) -> str:
        isa = f" ({' '.join(self.isa)})" if self.isa else ""
        return f"{self.device}{isa}" + (f", torch {self.torch_version}" if self.torch_version else "")


def aoti_metadata(path: Path) -> dict[str, str]:
    """The package's compile-time metadata (AOTI_DEVICE_KEY, AOTI_CPU_ISA, ...), merged over its models."""
    metadata: dict[str, str] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/data/aotinductor/" in name and name.endswith("wrapper_metadata.json"):
                metadata.update(json.loads(archive.read(name)))
    return metadata


def cpu_has(isa: str) -> bool:
    flags = ISA_FLAGS.get(isa, (isa.lower(),))
    return all(flag in _cpu_flags() for flag in flags)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def this_cpu_isa() -> tuple[str, ...]:
    """AOTInductor's names for this CPU's features (what a package compiled here will need)."""
    return tuple(name for name in ISA_FLAGS if cpu_has(name))
