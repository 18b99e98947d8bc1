"""The one safetensors writer, and the header that says what a weights file is.

safetensors' own ``save_file`` writes its metadata map in hash order, so the same tensors with
the same header come out as different bytes on every call (a re-staged checkpoint would be
uploaded again). :func:`write` lays the file out itself, deterministically: the 8-byte
little-endian header length, the JSON header (``__metadata__`` first, in the order given, then
the tensors sorted by name with dtype, shape and data offsets), spaces up to 8-byte alignment,
then each tensor's raw little-endian bytes in the same order. Equal tensors and header give
byte-identical files. Each tensor is written straight from its memory (no copy of the whole
state in between).

:func:`checkpoint_header` is what every checkpoint's weights say about themselves (format,
direction, phase, step, model config, tokenizer sha256, backlm version), so a weights file
copied out of its folder still says which way it reads.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# torch dtype name → safetensors dtype
_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
           "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
           "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
ALIGN = 8


def checkpoint_header(meta: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a checkpoint with meta.json ``meta``, keys in a
    fixed order. Nothing that changes between two saves of one state (the time) is in it."""
    from backlm import __version__

    tokenizer = meta.get("tokenizer")
    tok_sha = tokenizer.get("sha256") if isinstance(tokenizer, dict) else None
    return {
        "format": "pt",
        "direction": str(meta["direction"]),  # a Direction is a str-enum: its value
        "phase": str(meta.get("phase") or "base"),
        "step": str(int(meta["step"])),
        "model_config": json.dumps(dict(meta["model_config"]), sort_keys=True,
                                   separators=(",", ":")),
        "tokenizer_sha256": str(tok_sha or ""),
        "backlm_version": __version__,
    }


def write(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (name → torch tensor) to ``path`` as safetensors with ``metadata``
    (string values, kept in the order given), byte for byte the same for equal input."""
    import torch

    if sys.byteorder != "little":  # safetensors stores little-endian; the raw bytes are ours
        raise RuntimeError("writing safetensors needs a little-endian machine")
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map strings to strings: {bad[0]!r}")
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    names = sorted(tensors)
    parts, offset = [], 0
    for name in names:
        t = tensors[name].detach()
        dtype = _DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} has no safetensors name")
        t = t.cpu().contiguous()  # no copy for a contiguous CPU tensor
        size = t.numel() * t.element_size()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        parts.append(t)
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % ALIGN)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for t in parts:
            if t.numel():
                # a byte view of the tensor's own memory (bf16 has no numpy type; uint8 does)
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

