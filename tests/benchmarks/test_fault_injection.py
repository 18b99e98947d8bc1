"""benchmarks/fault_injection.py on the tiny dataset: twenty SIGKILLs at random points of a run,
then resumed to completion, equal an uninterrupted run; nothing torn, the log always readable."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fault_injection.py"


def _load():
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_injection"] = module  # dataclasses look their module up while built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h5dump") is None, reason="HDF5's tools are not installed")
def test_twenty_sigkills_then_resume_equal_an_uninterrupted_run(home, tmp_path):
    fi = _load()
    sets = [*TINY, "log.flush_every=3", "log.per_token_every=5", "log.stats_every=7",
            "train.eval_every=25"]
    out = fi.inject("cpu-tiny", sets, kills=20, seed=3, max_steps=150, save_every=4,
                    workdir=tmp_path / "fi", env=dict(os.environ), aimed=0.3)
    # no session may log the last step (the step cap): the kills all come before the end
    assert len(out.kills) == 20 and out.finished and out.steps == 150
    for kill in out.kills:  # after every kill
        assert not kill.bad, kill  # each visible checkpoint loads, checksum verified
        assert kill.log in ("h5dump", "after h5clear", "none yet"), kill
    assert sum(k.log == "h5dump" for k in out.kills) > 0
    assert out.leftover == []  # no .tmp or .old anywhere once resumed
    assert out.loss_diff == 0 and out.log_loss_diff == 0 and out.log_steps_ok
    assert out.bpb[0] is not None and out.bpb[0] == out.bpb[1]
    assert out.final_bpb[0] is not None and out.final_bpb[0] == out.final_bpb[1]
    assert out.ok()
