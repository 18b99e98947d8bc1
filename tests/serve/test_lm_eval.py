"""lm-evaluation-harness's local-completions against a served tiny forward model agrees with
``backlm eval`` on the same ARC-layout items: accuracy and every choice's log-likelihood."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in
                        ("lm_eval", "aiohttp", "tenacity")),
                    reason="lm_eval with its API extras (aiohttp, tenacity) is not installed")
def test_the_harness_scores_like_backlm_eval(compare_world, phase_world, monkeypatch, tmp_path):
    from benchmarks.lm_eval_completions import ROOT, compare
    from tests.helpers import use_world

    use_world(monkeypatch, phase_world, compare_world)
    monkeypatch.chdir(ROOT)  # the task YAML names its data relative to the repository root
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = compare("f0")
    print({k: v for k, v in out.items() if k not in ("harness", "backlm")})  # for the notes
    items = (ROOT / "benchmarks" / "lm_eval" / "arc_local.jsonl").read_text().split("\n")
    assert out["items"] == len([line for line in items if line.strip()])
    assert out["harness_scores"] == out["backlm_scores"]
    assert out["max_abs_loglik_gap"] < 1e-4, out
