"""The one safetensors writer: safetensors reads what it writes (header and tensors, in a clean
process), equal input gives equal bytes, and every checkpoint's weights say what they are."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from backlm import __version__
from backlm.experiment import checkpoint as ckpt
from backlm.experiment import weights
from tests.experiment.test_checkpoint import _model_and_optimizer

# Reads a safetensors file with safetensors itself, in a fresh interpreter (nothing of backlm
# imported): its header, and each tensor's dtype, shape and the sha256 of its bytes.
READER = """
import hashlib, json, sys
import torch
from safetensors import safe_open
with safe_open(sys.argv[1], framework="pt") as f:
    out = {"metadata": f.metadata(), "tensors": {}}
    for k in f.keys():
        t = f.get_tensor(k).contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        out["tensors"][k] = [str(t.dtype), list(t.shape), hashlib.sha256(raw).hexdigest()]
print(json.dumps(out))
"""


def read_elsewhere(path) -> dict:
    res = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def fingerprint(t: torch.Tensor) -> list:
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return [str(t.dtype), list(t.shape), hashlib.sha256(raw).hexdigest()]


META = {"step": 7, "phase": "sft", "direction": "backward", "tokens": 64, "loaders": [{}],
        "model_config": {"depth": 2, "width": 64}, "rng": ckpt.rng_state(cuda=False),
        "tokenizer": {"vocab_size": 300, "sha256": "ab" * 32}}


def test_safetensors_reads_every_dtype_and_the_header_in_order(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {
        "b.f32": torch.randn(3, 5, generator=g),
        "a.bf16": torch.randn(4, 2, generator=g).to(torch.bfloat16),
        "c.f16": torch.randn(7, generator=g).to(torch.float16),
        "d.i64": torch.arange(5), "e.i32": torch.arange(3, dtype=torch.int32),
        "f.u8": torch.arange(9, dtype=torch.uint8), "g.bool": torch.tensor([True, False, True]),
        "h.scalar": torch.tensor(2.5, dtype=torch.float64), "i.empty": torch.zeros(0, 4),
        "j.strided": torch.randn(6, 4, generator=g).t(),  # not contiguous
    }
    path = tmp_path / "w.safetensors"
    weights.write(path, tensors, {"format": "pt", "zeta": "1", "alpha": "2"})
    seen = read_elsewhere(path)
    assert seen["metadata"] == {"format": "pt", "zeta": "1", "alpha": "2"}
    assert seen["tensors"] == {k: fingerprint(v) for k, v in tensors.items()}
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0 and data[8 + n - 1:8 + n] in (b"}", b" ")
    header = json.loads(data[8:8 + n])
    assert list(header) == ["__metadata__", *sorted(tensors)]  # metadata first, then by name
    assert list(header["__metadata__"]) == ["format", "zeta", "alpha"]  # as given
    assert len(data) == 8 + n + sum(v.numel() * v.element_size() for v in tensors.values())
    with pytest.raises(TypeError, match="strings"):
        weights.write(path, tensors, {"step": 7})


def test_a_checkpoint_says_what_it_is_and_two_saves_are_the_same_bytes(tmp_path):
    model, opt = _model_and_optimizer()
    a = ckpt.save(tmp_path / "a", model.state_dict(), opt.state_dict(), {**META, "saved": "1"})
    b = ckpt.save(tmp_path / "b", model.state_dict(), opt.state_dict(), {**META, "saved": "2"})
    for name in (ckpt.MODEL_FILE, ckpt.OPTIM_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert ckpt.read_meta(a)["model_sha256"] == ckpt.read_meta(b)["model_sha256"]
    seen = read_elsewhere(a / ckpt.MODEL_FILE)
    assert seen["metadata"] == {
        "format": "pt", "direction": "backward", "phase": "sft", "step": "7",
        "model_config": '{"depth":2,"width":64}', "tokenizer_sha256": "ab" * 32,
        "backlm_version": __version__}
    assert seen["tensors"] == {k: fingerprint(v) for k, v in model.state_dict().items()}
    state, optim, _ = ckpt.load(a)  # and backlm reads it back
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_with_an_empty_header_still_loads(tmp_path):
    """Checkpoints written before the header (safetensors' save_file, no metadata)."""
    from safetensors.torch import save_file

    model, opt = _model_and_optimizer()
    folder = ckpt.save(tmp_path / "old", model.state_dict(), opt.state_dict(), META)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / ckpt.MODEL_FILE))
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    meta["model_sha256"] = ckpt.sha256_file(folder / ckpt.MODEL_FILE)
    (folder / ckpt.META_FILE).write_text(json.dumps(meta))
    assert read_elsewhere(folder / ckpt.MODEL_FILE)["metadata"] in (None, {})
    state, _, loaded = ckpt.load(folder)
    assert loaded["step"] == 7
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
