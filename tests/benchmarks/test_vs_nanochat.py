"""benchmarks/vs_nanochat.py: the step lines of both tools parsed, the median and the table
(lines recorded from real runs; nanochat itself is not needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vs_nanochat.py"

# nanochat 92d63d4, `python -m scripts.base_train` on CPU (fp32, depth 4)
NANOCHAT = """\
Total batch size 4,096 => gradient accumulation steps: 1
step 00000/00015 (0.00%) | loss: 9.011501 | lrm: 0.03 | dt: 400577.95ms | tok/sec: 10 | bf16_mfu: 0.00 | epoch: 1 pq: 0 rg: 1 | total time: 0.00m
step 00011/00015 (73.33%) | loss: 8.983888 | lrm: 0.30 | dt: 2597.41ms | tok/sec: 1,576 | bf16_mfu: 0.00 | epoch: 1 pq: 0 rg: 1 | total time: 0.04m | eta: 0.2m
2026-12-02 05:46:34,367 - nanochat.checkpoint_manager - INFO - Saved model parameters to: /tmp/x/model_000015.pt
step 00014/00015 (93.33%) | loss: nan | lrm: 0.38 | dt: 2870.82ms | tok/sec: 1,426 | bf16_mfu: 0.00 | epoch: 1 pq: 0 rg: 1 | total time: 0.19m | eta: 0.0m
"""

# backlm's metrics.jsonl: step 0 is the validation before training, steps count from 1
BACKLM = """\
{"step": 0, "val_loss": 5.703887831996864, "val_bpb": 2.188228160747652, "val_ppl": 300.03}
{"step": 1, "loss": 5.70426082611084, "lr_mult": 1.0, "grad_norm": 0.89, "tokens": 4096, "tokens_per_sec": 36.525367604364796, "mfu": 0.0006, "dt": 7.008827475001453}
{"step": 12, "loss": 5.1, "lr_mult": 1.0, "grad_norm": 0.5, "tokens": 49152, "tokens_per_sec": 3012.5, "mfu": 0.4, "dt": 1.36}
not json
"""


@pytest.fixture(scope="module")
def vs():
    spec = importlib.util.spec_from_file_location("vs_nanochat", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_nanochat"] = module  # dataclasses look their module up while built
    spec.loader.exec_module(module)
    return module


def test_nanochat_step_lines(vs):
    parsed = [vs.parse_nanochat_line(line) for line in NANOCHAT.splitlines()]
    assert parsed == [None, (0, 10.0), (11, 1576.0), None, (14, 1426.0)]
    assert vs.parse_nanochat_line("step 3 | loss 1.0") is None


def test_backlm_records_count_from_zero_like_nanochat(vs):
    parsed = [vs.parse_backlm_line(line) for line in BACKLM.splitlines()]
    assert parsed == [None, (0, 36.525367604364796), (11, 3012.5), None]
    assert vs.parse_backlm_line(json.dumps([1, 2])) is None


def test_median_of_steps_10_to_39_and_the_table(vs):
    nano = vs.Run("nanochat", {i: 1000.0 + i for i in range(40)}, first_step_s=73.2)
    back = vs.Run("backlm", {i: (99999.0 if i < 10 else 2000.0) for i in range(40)},
                  first_step_s=6.4)
    assert nano.median() == pytest.approx(1024.5)  # steps 10..39 only
    assert back.median() == 2000.0  # the slow warm-up steps and the outlier 0-9 are left out
    short = vs.Run("backlm", {i: 1.0 for i in range(39)})
    assert short.median() is None  # a run that stopped early has no median
    text = vs.table("AMD EPYC 7B13", [("d4 fp32, round 1", nano, back),
                                      ("d6 fp32, round 1", nano, short)],
                    [("d4 fp32", [nano], [back])], ["d4 bf16"])
    lines = text.splitlines()
    assert lines[0] == "CPU: AMD EPYC 7B13"
    assert "| d4 fp32, round 1 | 1,024 | 2,000 | 1.95× |" in lines
    assert "| d6 fp32, round 1 | 1,024 | - | - |" in lines
    assert "| d4 fp32: command → first step | 73.2 s | 6.4 s | — |" in lines
    assert "| d4 bf16 | n/a: no native bf16 | n/a: no native bf16 | — |" in lines


def test_a_folder_that_is_not_nanochat_is_refused_before_anything_runs(tmp_path):
    import subprocess

    work = tmp_path / "work"
    out = subprocess.run([sys.executable, str(SCRIPT), "--nanochat", str(tmp_path),
                          "--work", str(work)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"{tmp_path} is not a nanochat checkout (no scripts/base_train.py)"]
    assert not work.exists()
