"""Fault injection: which faults the environment asks for and when they fire."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backlm.callbacks import LoopState, RunInfo
from backlm.train import faults


def state_with(model) -> LoopState:
    return LoopState(RunInfo(exp=None, cfg=None, dist=None, model=model, tokenizer=None,
                             device=None, device_name="cpu", is_cuda=False, data_dir=Path("."),
                             autocast=None))


def test_nothing_unless_asked(monkeypatch):
    for name in faults.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert faults.callbacks() == []
    monkeypatch.setenv("BACKLM_NAN_AT_STEP", "x")  # not a step: ignored, not a crash
    (cb,) = faults.callbacks()
    assert (cb.kill, cb.interrupt, cb.nan) == (None, None, None)


def test_faults_fire_as_the_next_step_begins(monkeypatch):
    monkeypatch.setenv("BACKLM_INTERRUPT_AT_STEP", "6")
    monkeypatch.setenv("BACKLM_NAN_AT_STEP", "4")
    (cb,) = faults.callbacks()
    model = torch.nn.Linear(2, 2)
    state = state_with(model)
    for step in (1, 2, 3, 4, 5):  # steps 0..3 are complete, then 4 is: no fault before
        assert torch.isfinite(model.weight).all()
        cb.on_step_start(state, step)
    assert torch.isnan(model.weight).all()  # step 4 completed: its weights are poisoned
    cb.on_step_start(state, 6)
    with pytest.raises(KeyboardInterrupt):
        cb.on_step_start(state, 7)  # step 6 completed (logged, checkpointed if due)


def test_an_interrupt_in_a_save_fires_for_its_step_once_per_run(monkeypatch):
    monkeypatch.setenv(faults.IN_SAVE, "6")
    faults.callbacks()  # a run starts
    assert faults.save_hook(4) is None
    hook = faults.save_hook(6)
    with pytest.raises(KeyboardInterrupt):
        hook()
    assert faults.save_hook(6) is None  # the save Ctrl-C then makes goes through
    faults.callbacks()  # the next run in this process
    assert faults.save_hook(6) is not None
    monkeypatch.delenv(faults.IN_SAVE)
    assert faults.save_hook(6) is None
