"""benchmarks/lm_eval_hf.py: lm-evaluation-harness (``--model hf``) on an exported tiny forward
model scores the local ARC-layout task as ``backlm eval`` does: the same accuracies, the same
per-choice log-likelihoods."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli, tiny_args

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lm_eval_hf.py"


def _load():
    spec = importlib.util.spec_from_file_location("lm_eval_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lm_eval_hf"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_harness_scores_the_local_task_as_backlm_eval_does(home, tmp_path):
    pytest.importorskip("lm_eval")
    res = run_cli(tiny_args("--direction", "forward", "--id", "fw", "--set", "model.seq_len=128",
                            "--set", "train.total_batch_tokens=512", steps=12))
    assert res.exit_code == 0, res.output
    script = _load()
    work = tmp_path / "work"
    assert script.main(["fw", "--experiments-dir", str(home / "exps"), "--workdir",
                        str(work)]) == 0
    out = json.loads((work / "compare.json").read_text())
    assert out["items"] == 20 and out["choices"] == 77
    assert out["max_abs_ll_diff"] < 1e-3 and out["per_item_acc_equal"]
    assert out["backlm"]["acc"] == out["lm_eval"]["reported_acc"]
    assert out["backlm"]["acc_norm"] == out["lm_eval"]["reported_acc_norm"]
