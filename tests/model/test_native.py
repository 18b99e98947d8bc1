"""The switch for the optional fused C kernels: built where a compiler is, off by environment,
and without them (no compiler at install) the PyTorch ops train the same model to the same
numbers."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

from backlm.model import native
from tests.helpers import native as built


def test_built_where_a_compiler_is():
    # CI and this project's machines have gcc: a silently skipped build would leave the fused
    # path (and the MFU figures) untested, so fail loudly there
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("gcc"):
        pytest.skip("no x86-64 gcc here; the fallback is what test_without_the_extension checks")
    assert native.native_kernels() in ("avx512", "avx2", "generic")


def test_env_switch_turns_them_off():
    code = "from backlm.model.native import native_kernels; print(native_kernels())"
    env = {**os.environ, "BACKLM_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_set_native_returns_the_previous_setting():
    first = native.set_native(False)
    try:
        assert native.native_kernels() is None
        assert native.set_native(True) is False
        assert native.native_kernels() == (native.lib.ISA if native.lib is not None else None)
    finally:
        native.set_native(first)


@built
def test_usable_only_for_what_the_c_kernels_take():
    x = torch.ones(4, 6)
    previous = native.set_native(True)
    try:
        assert native.usable(x, x[1:])
        # raw fp32 row-major CPU buffers only: anything else must take the PyTorch ops
        assert not native.usable(x, x.t())
        assert not native.usable(x.to(torch.bfloat16)) and not native.usable(x.double())
        native.set_native(False)
        assert not native.usable(x)
    finally:
        native.set_native(previous)


def train_two_steps() -> dict:
    """Two SGD steps of a small GPT from a fixed seed, and what the native module reports."""
    from backlm.config import ModelConfig
    from backlm.model.gpt import GPT

    torch.manual_seed(0)
    cfg = ModelConfig(depth=2, width=64, head_dim=16, vocab_size=97, seq_len=48)
    model = GPT(cfg)
    with torch.no_grad():  # the init zeroes the output projections; every kernel should count
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    idx, tgt = torch.randint(0, 97, (2, 48)), torch.randint(0, 97, (2, 48))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only waits on more threads (busy machines)
    try:
        for _ in range(2):
            opt.zero_grad()
            loss = model(idx, tgt)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    native.set_native(True)  # asking for them cannot conjure them up
    return {"lib": native.lib is not None, "kernels": native.native_kernels(),
            "usable": native.usable(torch.ones(4, 4)), "losses": losses}


@pytest.fixture
def without_the_extension(monkeypatch):
    """backlm.model.native imported again as where no compiler built the extension: its import
    fails, and every caller (they hold the module, not its ``lib``) sees it absent."""
    import backlm.model as package

    monkeypatch.setitem(sys.modules, "backlm.model._native", None)  # importing it fails
    monkeypatch.delattr(package, "_native", raising=False)
    importlib.reload(native)
    yield native
    monkeypatch.undo()
    importlib.reload(native)


def test_without_the_extension_the_pytorch_ops_train_the_same_model(request):
    previous = native.set_native(True)
    try:
        here = train_two_steps()  # with the C kernels where they are built
    finally:
        native.set_native(previous)
    assert here["lib"] is (native.lib is not None)
    request.getfixturevalue("without_the_extension")
    absent = train_two_steps()
    assert absent["lib"] is False and absent["kernels"] is None and absent["usable"] is False
    assert absent["losses"][1] < absent["losses"][0]  # the step trained
    assert absent["losses"] == pytest.approx(here["losses"], rel=1e-5)
