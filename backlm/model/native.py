"""The optional fused C kernels (``backlm/model/_native.c``): whether they were built, the
switch that turns them off (``BACKLM_NATIVE=0`` or :func:`set_native`), and which instruction
set's copy runs (``BACKLM_NATIVE_ISA`` at import or :func:`set_isa`).

``setup.py`` builds them at install when a C compiler with OpenMP is present; without them the
same functions use PyTorch ops, only slower on CPU. The kernels come in fp32 and bf16 (bf16
tensors read and written as raw 16-bit buffers, computed in fp32 registers); the bf16 ones round
with AVX512-BF16's conversion instruction in the ``avx512bf16`` copy and with a portable bit
trick in the others, both to nearest even like ``Tensor.to(torch.bfloat16)``.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

try:
    from backlm.model import _native as lib
except ImportError as error:  # pragma: no cover - depends on the install
    lib = None
    if "BACKLM_NATIVE_ISA" in str(error):  # a bad setting is not a missing build: say so
        warnings.warn(f"{error}; using PyTorch ops instead", stacklevel=1)

_native_on = os.environ.get("BACKLM_NATIVE", "1") != "0"


def native_kernels() -> str | None:
    """The instruction set the fused C kernels run with, or None when they are off or absent.

    With them, fp32 and bf16 CPU work on norms, QK norm + rotary, attention softmax and the
    softcapped loss takes one pass over memory per op instead of several (``BACKLM_NATIVE=0``
    turns them off; ``benchmarks/train_throughput.py --native both`` compares).
    """
    return lib.ISA if lib is not None and _native_on else None


def isa() -> str | None:
    """The copy of the kernels in use: ``avx512bf16`` (fp32 kernels of ``avx512``, bf16
    rounding by the CPU's instruction), ``avx512``, ``avx2`` or ``generic``; None when off or
    absent. :func:`native_kernels` names the fp32 kernels' copy."""
    return lib.BF16_ISA if lib is not None and _native_on else None


def supported_isas() -> list[str]:
    """The copies this CPU can run, most capable first (empty without the extension)."""
    return list(lib.supported_isas()) if lib is not None else []


def set_isa(name: str) -> str | None:
    """Run the ``name`` copy of the kernels from now on (``generic`` forces the portable
    fallback); returns the previous one. Raises ValueError for a copy this CPU cannot run."""
    if lib is None:
        raise ValueError("backlm's C kernels are not built: there is no instruction set to pick")
    previous = lib.BF16_ISA
    lib.set_isa(name)
    return previous


def set_native(enabled: bool) -> bool:
    """Turn the fused C kernels on or off for this process; returns the previous setting."""
    global _native_on
    previous, _native_on = _native_on, enabled
    return previous


def usable(*tensors: Tensor) -> bool:
    """Whether the C kernels can take these tensors now."""
    # the C kernels take raw fp32 CPU buffers in row-major order; torch.compile traces fake
    # tensors, which have no data, so it gets the PyTorch ops
    return (lib is not None and _native_on and not torch.compiler.is_compiling()
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                    for t in tensors))


def usable_bf16(*tensors: Tensor) -> bool:
    """Whether the bf16 C kernels can take these tensors now (row-major bf16 CPU buffers)."""
    return (lib is not None and _native_on and not torch.compiler.is_compiling()
            and all(t.device.type == "cpu" and t.dtype == torch.bfloat16 and t.is_contiguous()
                    for t in tensors))
