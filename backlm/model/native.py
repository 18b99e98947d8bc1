"""The optional fused C kernels (``backlm/model/_native.c``): whether they were built, and the
switch that turns them off (``BACKLM_NATIVE=0`` or :func:`set_native`).

``setup.py`` builds them at install when a C compiler with OpenMP is present; without them the
same functions use PyTorch ops, only slower on CPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    from backlm.model import _native as lib
except ImportError:  # pragma: no cover - depends on the install
    lib = None

_native_on = os.environ.get("BACKLM_NATIVE", "1") != "0"


def native_kernels() -> str | None:
    """The instruction set the fused C kernels run with, or None when they are off or absent.

    With them, fp32 CPU work on norms, QK norm + rotary, attention softmax and the softcapped
    loss takes one pass over memory per op instead of several (``BACKLM_NATIVE=0`` turns them
    off; ``benchmarks/train_throughput.py --native both`` compares).
    """
    return lib.ISA if lib is not None and _native_on else None


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
