"""Smart training: early stopping, best restore, divergence and convergence signals."""

from __future__ import annotations

import json
import math

import pytest

from backlm.config import EarlyStopConfig, RunConfig
from backlm.errors import UserError
from backlm.train.early_stop import BestTracker, Convergence, slope
from tests.helpers import loop_state, metrics, run_cli, tiny_args, train_subprocess


def fake_run(tmp_path, **es):
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    return loop_state(tmp_path, RunConfig(early_stop=EarlyStopConfig(enabled=True, **es)))


def feed(tracker, run, values, every=2):
    for i, v in enumerate(values):
        run.save_requested = False
        tracker.on_eval(run, i * every, {"val_bpb": v})
        if run.stop_reason:
            return i * every
    return None


def test_patience_counts_evaluations_without_improvement(tmp_path):
    run = fake_run(tmp_path, patience=3, min_delta=0.01)
    t = BestTracker(run)
    # best at eval 2 (step 4); 1.995 is not better by min_delta; stop 3 evals after the best
    assert feed(t, run, [3.0, 2.5, 2.0, 1.995, 2.1, 2.05, 1.0]) == 10
    assert t.best_step == 4 and run.stop_reason == "early stop"


def test_thresholds_and_nonfinite(tmp_path):
    run = fake_run(tmp_path, stopping_threshold=1.5)
    assert feed(BestTracker(run), run, [3.0, 2.0, 1.4]) == 4
    assert run.stop_reason == "target reached"
    run = fake_run(tmp_path, divergence_threshold=5.0)
    assert feed(BestTracker(run), run, [3.0, 6.0]) == 2 and run.stop_reason == "diverged"
    run = fake_run(tmp_path)
    assert feed(BestTracker(run), run, [3.0, math.inf]) == 2 and run.stop_reason == "diverged"
    run = fake_run(tmp_path, mode="max", patience=1)
    t = BestTracker(run)
    assert feed(t, run, [0.1, 0.5, 0.4]) == 4 and t.best_step == 2


def test_improvement_requests_a_checkpoint_and_best_json(tmp_path):
    run = fake_run(tmp_path)
    t = BestTracker(run)
    t.on_eval(run, 4, {"val_bpb": 2.0, "val_loss": 3.0})
    assert run.save_requested
    t.on_checkpoint(run, 4, None)
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["step"] == 4 and best["monitor"] == "val_bpb" and "lowest" in best["reason"]


def test_bad_early_stop_settings(tmp_path):
    with pytest.raises(UserError, match="mode"):
        BestTracker(fake_run(tmp_path, mode="up"))
    run = fake_run(tmp_path, monitor="val_acc")
    with pytest.raises(UserError, match="val_acc"):
        BestTracker(run).on_eval(run, 0, {"val_bpb": 1.0})


def test_convergence_signals():
    assert slope([1, 2, 3]) == pytest.approx(1.0) and slope([5]) == 0.0
    c = Convergence(window=10, plateau_evals=2, plateau_rel=0.01)
    run = loop_state()
    for step, val in enumerate([3.0, 2.0, 1.999, 1.998]):
        rec = {"loss": 4.0 - step, "grad_norm": 1.0, "val_loss": val}
        c.on_step_end(run, step + 1, rec)
    assert rec["plateau"] is True and rec["loss_slope"] < 0 and rec["val_ppl"] == \
        pytest.approx(math.exp(1.998))
    assert c.plateau_at == 4


def test_early_stop_end_to_end(home):
    res = run_cli(tiny_args("--direction", "forward", "--id", "es", "--set", "early_stop.enabled=true",
                            "--set", "early_stop.patience=2", "--set", "early_stop.min_delta=100",
                            "--set", "train.eval_every=2", steps=20))
    assert res.exit_code == 0, res.output
    exp = home / "exps" / "es"
    summary = json.loads((exp / "training_summary.json").read_text())
    # Best is the step-0 evaluation; evaluations at 2 and 4 do not improve by 100: stop at 4.
    assert summary["stop_reason"] == "early stop" and summary["steps"] == 4
    assert summary["best"]["step"] == 0 and summary["max_steps"] == 20
    assert "early stop" in res.output



def test_nan_stops_as_diverged_and_restores_the_best(home):
    res = train_subprocess("nan", {"BACKLM_NAN_AT_STEP": "5"},
                            extra=("--set", "train.eval_every=2"))
    assert res.returncode == 1, res.stderr
    exp = home / "exps" / "nan"
    summary = json.loads((exp / "training_summary.json").read_text())
    assert summary["stop_reason"] == "diverged" and summary["steps"] == 6
    steps = sorted(int(p.name[5:]) for p in (exp / "checkpoints").glob("step_*"))
    assert max(steps) == 4  # nothing saved after the weights went bad
    best = json.loads((exp / "checkpoints" / "best.json").read_text())
    assert best["step"] == 4 and summary["final_model_step"] == 4
    from backlm.experiment.loading import load_model
    from backlm.train.loop import TrainingRun  # noqa: F401

    lm = load_model(str(exp))
    assert lm.step == 4
    assert all(math.isfinite(float(p.detach().abs().sum())) for p in lm.model.parameters())
    # The restored final model's validation loss is the best evaluation's.
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["results"]["val_bpb"] == pytest.approx(best["value"])
    val4 = next(m for m in metrics(exp) if m["step"] == 4)["val_bpb"]
    assert best["value"] == pytest.approx(val4)
