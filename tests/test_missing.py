"""A mean over nothing counted is missing (NaN / null), never 0, and readers treat it so."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backlm.missing import MISSING, is_missing, json_ready, mean_or_missing, shown

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(total=finite, count=st.integers(1, 10**6))
def test_mean_or_missing_is_the_mean_when_something_was_counted(total, count):
    assert mean_or_missing(total, count) == pytest.approx(total / count)


class _Tok:
    def token_byte_lengths(self):
        return []


class _Loaded:
    tokenizer = _Tok()


def _metrics_over_nothing(total: float) -> dict[str, float]:
    """Every metric function of the package fed an empty set (``total`` for any numerator)."""
    import torch

    from backlm.compare.stats import bpb
    from backlm.config import RunConfig
    from backlm.direction import Direction
    from backlm.evaluation.lm import LossSums
    from backlm.evaluation.scoring import evaluate_choice_task, evaluate_generation_task
    from backlm.fivecat.gates import _mean
    from backlm.train.rl import RLPhase

    sums = LossSums(nats=total, bytes=0.0, tokens=0.0)
    _, choice = evaluate_choice_task(_Loaded(), [], Direction.FORWARD)
    _, gen = evaluate_generation_task(_Loaded(), [], Direction.FORWARD, 4)
    rl = RLPhase(RunConfig(phase="rl")).record(
        {"reward": total, "reward_sq": total * total, "samples": 0, "zero_spread": 0.0})
    return {"loss": sums.loss, "bpb": sums.bpb,
            "compare bpb": bpb(np.full(3, total), np.zeros(3)),
            "acc": choice["acc"], "acc_norm": choice["acc_norm"], "score": choice["score"],
            "token_f1": gen["token_f1"], "exact_match": gen["exact_match"],
            "5cat gate mean": _mean(torch.full((2, 3), total), torch.zeros(2, 3)),
            **{f"rl {k}": v for k, v in rl.items()}}


@settings(deadline=None, max_examples=30)  # the first call imports torch
@given(total=finite)
def test_every_metric_over_nothing_is_missing(total):
    assert mean_or_missing(total, 0) != mean_or_missing(total, 0)  # NaN
    values = _metrics_over_nothing(total)
    assert values and all(is_missing(v) for v in values.values()), values


def test_json_writers_write_null_for_missing(tmp_path):
    from backlm.atomic import write_json
    from backlm.logs.jsonl import JsonlLogger

    write_json(tmp_path / "a.json", {"val": MISSING, "inf": [math.inf], "ok": 1.5})
    text = (tmp_path / "a.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"val": None, "inf": [None], "ok": 1.5}
    log = JsonlLogger(tmp_path / "m.jsonl")
    log.log(2, {"val_chat_loss": MISSING})
    log.close()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 2, "val_chat_loss": None}
    assert json_ready((MISSING, 1)) == [None, 1]


def test_early_stop_never_takes_missing_as_best_plateau_or_stop(tmp_path):
    from backlm.config import EarlyStopConfig, RunConfig
    from backlm.train.early_stop import BestTracker, Convergence
    from tests.helpers import loop_state

    (tmp_path / "checkpoints").mkdir()
    state = loop_state(tmp_path, RunConfig(early_stop=EarlyStopConfig(enabled=True, patience=1)))
    tracker, conv = BestTracker(state), Convergence(plateau_evals=1)
    for step in (0, 2, 4, 6):
        tracker.on_eval(state, step, {"val_bpb": MISSING})
        tracker.on_checkpoint(state, step, None)
        record = {"loss": 3.0, "grad_norm": 1.0, "val_loss": MISSING}
        conv.on_step_end(state, step, record)
        assert "val_ppl" not in record and "plateau" not in record
    assert state.stop_reason is None and tracker.best is None and tracker.wait == 0
    assert not (tmp_path / "checkpoints" / "best.json").exists()
    tracker.on_eval(state, 8, {"val_bpb": 2.0})
    tracker.on_eval(state, 10, {"val_bpb": MISSING})  # no wait: patience 1 is not used up
    assert tracker.best == 2.0 and tracker.best_step == 8 and state.stop_reason is None


def test_readers_show_missing_as_missing(tmp_path):
    from backlm.commands.eval import _fmt
    from backlm.compare.output import _f, to_csv
    from backlm.experiment.tree import _best, list_rows
    from backlm.report.sections import fmt
    from tests.helpers import make_child

    for cell in (shown(MISSING), fmt(MISSING), _fmt(MISSING), shown(None)):
        assert cell == "-"
    assert _f(MISSING) == "—" and "nan" not in to_csv([{"bpb": MISSING}]).lower()
    exp = make_child(tmp_path, "chat", best={"step": 2, "monitor": "val_chat_loss",
                                             "value": None},
                     results={"val_chat_loss": MISSING, "val_bpb": 1.25})
    assert _best(exp, {"val_chat_loss": MISSING}) is None
    assert _best(exp, {"val_chat_loss": MISSING, "val_bpb": 1.25}) == "val_bpb 1.2500 (final)"
    assert shown(list_rows(tmp_path)[0]["val_bpb"]) == "1.2500"
