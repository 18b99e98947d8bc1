"""The GPT and its decoding; knows no direction, no experiment folder, no training loop.

What the model reads is token ids in whatever order the data side chose; its loss ignores the
targets set to :data:`IGNORE_INDEX`. Importing this package costs nothing: the modules that
need torch load on first use of a name (so ``backlm.direction`` can import the constant).

- ``gpt``: the GPT (rotary, RMS norm, QK norm, ReLU², softcap) and its generation entry point;
- ``attention``: causal attention (blocked on fp32 CPU, SDPA elsewhere);
- ``kernels``: hand-written autograd functions for the memory-bound parts;
- ``native``: the optional fused C kernels (``_native.c``);
- ``decode``: the generation engine (one sampler, one prefill copied into every row,
  batched steps, the fused C step at batch 1).
"""

from __future__ import annotations

import importlib
from typing import Any

IGNORE_INDEX = -1
"""Target value the loss ignores (``cross_entropy(..., ignore_index=IGNORE_INDEX)``)."""

_NAMES = {"GPT": "gpt", "KVCache": "decode", "Decoder": "decode", "GREEDY": "decode",
          "SamplingParams": "decode", "generate": "decode", "sample": "decode",
          "sample_steps": "decode", "stream": "decode", "fused_usable": "decode",
          "decode": "decode", "scored_steps": "decode", "Step": "decode", "native": None}

__all__ = ["GPT", "GREEDY", "IGNORE_INDEX", "Decoder", "KVCache", "SamplingParams", "Step",
           "decode", "fused_usable", "generate", "native", "sample", "sample_steps",
           "scored_steps", "stream"]

def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _NAMES[name]
    if module is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
