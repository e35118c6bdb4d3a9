"""Which implementation serves each device: the compiled kernels (``rarekit._C``) or the references.

``import rarekit`` loads ``rarekit._C`` when it was built; otherwise every op falls back to
:mod:`rarekit.reference` with one warning. ``RAREKIT_FORCE_REFERENCE=1`` in the environment, or
:func:`set_backend("reference") <set_backend>`, forces the reference path.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

CPU_ISAS = ("baseline", "avx2", "avx512")  # the names RAREKIT_CPU_ISA and rarekit._C.set_cpu_isa take

try:
    from rarekit import _C
    _IMPORT_ERROR: Exception | None = None
except ImportError as error:  # not built: the references serve every op
    _C = None
    _IMPORT_ERROR = error

_force_reference = os.environ.get("RAREKIT_FORCE_REFERENCE", "0") not in ("", "0")
BUILD_HINT = ("build it with `make install`, or `pip install --no-build-isolation -e .` in the source folder "
              "(needs a C++ compiler and the installed torch)")


def _fallback_reason() -> str:
    """Why ``rarekit._C`` did not load, in words: not built, or built but not loadable (and Python's error)."""
    if importlib.util.find_spec("rarekit._C") is None:  # Python's own message would say "circular import"
        return "the compiled extension rarekit._C is not built"
    return f"the compiled extension rarekit._C failed to load ({_IMPORT_ERROR}); rebuild it against this torch"


if _C is None and not _force_reference:
    warnings.warn(
        f"rarekit: {_fallback_reason()}; using the pure-PyTorch references (slower). To get the kernels, "
        f"{BUILD_HINT}.", RuntimeWarning, stacklevel=2)

_requested_isa = os.environ.get("RAREKIT_CPU_ISA")
if _requested_isa is not None and _requested_isa not in CPU_ISAS:
    warnings.warn(
        f"rarekit: RAREKIT_CPU_ISA={_requested_isa!r} is not a CPU kernel ISA and is ignored; valid values: "
        f"{', '.join(CPU_ISAS)} (it caps the choice; the best one this CPU runs is used by default)",
        RuntimeWarning, stacklevel=2)


def _build_flags() -> dict[str, str]:
    return dict(item.split("=", 1) for item in _C.build_info().split(";")) if _C is not None else {}


def set_backend(name: str) -> None:
    """Serve every op from ``"native"`` kernels (where built) or the ``"reference"`` path."""
    global _force_reference
    if name not in ("native", "reference"):
        raise ValueError(f"set_backend: name must be 'native' or 'reference', got {name!r}")
    _force_reference = name == "reference"


def native(device: torch.device) -> bool:
    """True when the compiled kernels serve tensors on ``device``."""
    if _C is None or _force_reference:
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _build_flags().get("cuda") == "1"


def advise_huge_pages(fresh: torch.Tensor) -> None:
    """Asks Linux to back a fresh, not yet written CPU tensor with transparent huge pages, which spares
    one page fault per 4 KiB when it is first written; contents are unchanged. A no-op without the
    extension and off the CPU."""
    if _C is not None and fresh.device.type == "cpu":
        _C.advise_huge_pages(fresh)


def release_cpu_buffers() -> int:
    """Frees the CPU gradient buffers kept for reuse and returns how many bytes that was.

    The CPU cross-entropy and sigmoid kernels write gradients of 4 MiB or more into 2 MiB-aligned
    buffers that, once freed, are kept (at most two) and handed to the next gradient of about their
    size, so a training loop does not fault in fresh memory every step (a 52 MB gradient: ~15 ms of
    page faults, more than the kernel). At most the memory of two such gradients stays held after
    training; call this to give it back, or set ``RAREKIT_CPU_BUFFER_CACHE=0`` to keep none."""
    return int(_C.release_cached_buffers()) if _C is not None else 0


def backend_info() -> dict:
    """The path serving CPU and CUDA, the CPU kernel ISA, and the torch, CUDA and compiler versions."""
    flags = _build_flags()
    cuda_path = "unavailable"
    if torch.cuda.is_available():
        cuda_path = "native" if native(torch.device("cuda")) else "reference"
    return {
        "cpu": "native" if native(torch.device("cpu")) else "reference",
        "cuda": cuda_path,
        "cpu_isa": _C.cpu_isa() if _C is not None else None,
        "cpu_isas_supported": list(_C.supported_cpu_isas()) if _C is not None else [],
        "extension_built": _C is not None,
        "extension_has_cuda": flags.get("cuda") == "1",
        "extension_error": None if _IMPORT_ERROR is None else _fallback_reason(),
        "compiler": flags.get("compiler"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
