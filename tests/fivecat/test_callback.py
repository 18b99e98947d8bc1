"""5CAT during training: scores and ``best_5cat.json`` kept, and a mislabeled run stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backlm.direction import Direction
from tests.helpers import FIVECAT_TINY as TINY
from tests.helpers import fivecat_command as fivecat
from tests.helpers import loop_state


def test_backward_model_passes_and_training_kept_best_5cat(backward):
    code, out, result = fivecat(backward)
    assert code == 0, out
    assert result["direction"] == "backward" and result["gates_passed"] == 5
    best = json.loads((backward / "checkpoints" / "best_5cat.json").read_text())
    assert best["step"] in (50, 100) and best["formula"] == "0.8*B + 0.2*D"
    assert (backward / "checkpoints" / f"step_{best['step']:06d}").is_dir()
    assert best["score"] == pytest.approx(0.8 * best["gates"]["B"]["value"]
                                          + 0.2 * best["gates"]["D"]["value"])
    rows = [json.loads(x) for x in (backward / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in rows if "fivecat_score" in r}
    assert sorted(scored) == [50, 100]
    assert all(r["fivecat_inverted"] == 0 for r in scored.values())
    assert json.loads((backward / "metadata.json").read_text())["status"] == "finished"


def _fake_run(exp: Path, model, direction: str, **fivecat_cfg):
    from backlm.config import RunConfig
    from backlm.experiment.folder import Experiment
    from backlm.tokenizer import Tokenizer

    cfg = RunConfig()
    cfg.data.direction = Direction.parse(direction)
    cfg.log.hdf5 = False
    for k, v in fivecat_cfg.items():
        setattr(cfg.fivecat, k, v)
    e = Experiment(exp)
    state = loop_state(exp, cfg, model, Tokenizer.load(e.tokenizer_dir), data_dir=e.data_dir())
    state.printed = []
    state.listen(state.printed.append)
    return state


def test_callback_stops_a_mislabeled_run_and_keeps_best_5cat(mislabeled):
    from backlm.experiment.loading import load_model
    from backlm.fivecat import training_callbacks

    model = load_model(mislabeled, device="cpu").model.train()
    run = _fake_run(mislabeled, model, "backward", every=10, max_samples=8,
                    stop_on_inversion=True)
    (cb,) = training_callbacks(run)
    cb.on_train_start(run)
    record: dict = {}
    cb.on_step_end(run, 5, record)  # not a 5CAT step
    assert record == {} and run.stop_reason is None
    cb.on_step_end(run, 10, record)
    assert model.training  # back in training mode afterwards
    assert run.stop_reason == "direction inverted"
    assert any("DIRECTION INVERTED" in line for line in run.printed)
    assert record["fivecat_inverted"] == 1 and record["fivecat_B"] < 0
    assert run.save_requested  # first score is the best so far: its step needs a checkpoint
    cb.on_checkpoint(run, 10, mislabeled / "checkpoints")
    best = json.loads((mislabeled / "checkpoints" / "best_5cat.json").read_text())
    assert best["step"] == 10 and best["inverted"]


def test_callback_is_off_by_default():
    from backlm.fivecat import training_callbacks

    assert training_callbacks(loop_state()) == []


def mislabeled_callbacks(state) -> list:
    """5CAT judges this forward run as backward, like a mislabeled checkpoint."""
    from backlm.fivecat.callback import FivecatCallback

    cb = FivecatCallback(state)
    cb.direction = Direction.BACKWARD
    return [cb]


@pytest.mark.slow
def test_stop_on_inversion_stops_a_mislabeled_training_run(home):
    from backlm import logs
    from backlm.config import RunConfig, load_config
    from backlm.train import early_stop, loop
    from backlm.train.launch import create_experiment

    overrides = [*TINY, "fivecat.every=25", "fivecat.max_samples=8", "train.max_steps=100",
                 "fivecat.stop_on_inversion=true", "id=mislabeled-run"]
    cfg = load_config(RunConfig, overrides=overrides, flags={"log": {"wandb": "off"}})
    exp = create_experiment(cfg, home / "exps")
    summary = loop.run(exp, cfg, callbacks=lambda state: [
        *mislabeled_callbacks(state), *early_stop.callbacks(state), *logs.callbacks(state)])
    assert summary.status == "direction inverted" and summary.steps < 100
    assert (exp.checkpoints / f"step_{summary.steps:06d}").is_dir()
    best = json.loads((exp.checkpoints / "best_5cat.json").read_text())
    assert best["inverted"] and best["gates"]["B"]["value"] < 0
