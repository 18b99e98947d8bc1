"""The loop's one training step: every phase (and any :class:`~backlm.train.step.Phase`
plugged in) trains through the same ``_train_step``, which asks the phase for each
micro-batch's loss, its step sums and its validation."""

from __future__ import annotations

import contextlib

import pytest

from backlm.config import RunConfig, load_config
from backlm.errors import UserError
from backlm.train.phases import TextPhase, phase_class
from backlm.train.step import MicroBatch, mean_over_orders
from tests.helpers import branch_args, metrics, run_cli, tiny_args


class CountingPhase(TextPhase):
    """Plain text, plus a step sum, a record field and a validation metric of its own."""

    stats = ("rows",)
    record_fields = ("rows_per_step",)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.calls = 0

    def loss(self, run, loader):
        self.calls += 1
        micro = super().loss(run, loader)
        return MicroBatch(micro.loss, micro.inputs, micro.targets,
                          stats={"rows": micro.inputs.shape[0]})

    def record(self, sums):
        return {"rows_per_step": sums["rows"]}

    def evaluate(self, run, orders):
        return {"val_calls": float(self.calls)}


def test_a_phase_plugged_into_the_loop_is_what_trains(home):
    from backlm.config import RunConfig, load_config
    from backlm.train import loop
    from backlm.train.launch import create_experiment
    from tests.helpers import TINY

    cfg = load_config(RunConfig, overrides=[*TINY, "id=fake", "train.max_steps=4",
                                            "train.eval_every=2"],
                      flags={"log": {"wandb": "off"}})
    exp = create_experiment(cfg, home / "exps")
    phase = CountingPhase(cfg)
    assert loop.run(exp, cfg, phase=phase).status == "finished"
    micro_steps = cfg.train.total_batch_tokens // (cfg.train.device_batch_size
                                                   * cfg.model.seq_len)
    assert phase.calls == 4 * micro_steps
    rows = {m["step"]: m for m in metrics(exp.path)}
    # the phase's sums, over every micro-batch of the step, reach the step's record
    assert all(rows[s]["rows_per_step"] == micro_steps * cfg.train.device_batch_size
               for s in (1, 2, 3, 4))
    assert rows[2]["val_calls"] == 2 * micro_steps and rows[4]["val_calls"] == phase.calls
    assert rows[4]["tokens"] == 4 * cfg.train.total_batch_tokens


@pytest.mark.parametrize("phase", ["base", "mid", "sft", "rl"])
def test_every_phase_trains_through_the_one_step_and_its_loss_hook(lineage, monkeypatch,
                                                                   phase):
    from backlm.experiment.folder import Experiment
    from backlm.train import loop
    from backlm.train.phases import plan_streams

    cls = phase_class(phase)
    seen: list[str] = []
    steps: list[int] = []
    real_loss, real_step = cls.loss, loop._train_step

    def loss(self, run, loader):
        seen.append(type(self).__name__)
        return real_loss(self, run, loader)

    def train_step(tr, state, cbs):
        steps.append(state.step + 1)
        return real_step(tr, state, cbs)

    monkeypatch.setattr(cls, "loss", loss)
    monkeypatch.setattr(loop, "_train_step", train_step)
    if phase == "base":
        args = tiny_args("--direction", "backward", "--id", "kid", steps=2)
    else:
        args = branch_args(phase, "s1" if phase == "rl" else "b0", "--id", "kid", steps=2)
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    assert steps == [1, 2]
    # one loss call per micro-batch (rl: per prompt), from the step and nowhere else
    per_step = plan_streams(Experiment(lineage / "kid").config(), 1)[1]
    assert seen == [cls.__name__] * (2 * per_step)
    last = metrics(lineage / "kid")[-1]
    assert set(cls.record_fields) <= set(last) and set(cls.monitors("backward")) <= set(last)


def test_the_per_order_mean_is_set_only_for_several_orders():
    from backlm.direction import Direction

    out = {"val_x_forward": 1.0, "val_x_backward": 2.0}
    mean_over_orders(out, "val_x", [("forward", Direction.FORWARD),
                                    ("backward", Direction.BACKWARD)])
    assert out["val_x"] == 1.5
    one = {"val_x": 3.0}
    mean_over_orders(one, "val_x", [("", Direction.FORWARD)])
    assert one == {"val_x": 3.0}


@pytest.mark.parametrize("phase, streams, from_parent", [
    ("base", 4, False), ("mid", 4, True), ("sft", 4, True), ("rl", 3, True)])
def test_each_phase_counts_its_streams_and_says_where_its_weights_start(phase, streams,
                                                                       from_parent):
    from backlm.train.phases import phase_for, plan_streams

    cfg = load_config(RunConfig, overrides=["train.total_batch_tokens=256",
                                            "train.device_batch_size=1", "model.seq_len=64",
                                            "rl.prompts_per_step=3", f"phase={phase}"])
    assert phase_for(cfg).streams()[0] == streams and phase_for(cfg).from_parent is from_parent
    assert plan_streams(cfg, 1) == (streams, streams)
    with pytest.raises(UserError, match="cannot be split over 2 ranks") if streams % 2 else (
            contextlib.nullcontext()):
        plan_streams(cfg, 2)
