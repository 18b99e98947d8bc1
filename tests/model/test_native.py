"""The switch for the optional fused C kernels: built where a compiler is, off by environment."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

from backlm.model import native


def test_built_where_a_compiler_is():
    # CI and this project's machines have gcc: a silently skipped build would leave the fused
    # path (and the MFU figures) untested, so fail loudly there
    if platform.machine() in ("x86_64", "AMD64") and shutil.which("gcc"):
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
