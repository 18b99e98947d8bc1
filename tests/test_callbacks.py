"""The training loop's seam: what callbacks read, what they may set, and the order of hooks."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from backlm.callbacks import Callback, CallbackList, LoopState, RunInfo

TINY = [
    "model.depth=2", "model.width=64", "model.head_dim=32", "model.seq_len=32",
    "model.vocab_size=300", "train.device_batch_size=4", "train.total_batch_tokens=256",
    "train.eval_every=2", "train.eval_tokens=256", "train.save_every=100", "train.device=cpu",
    "data.dataset=tiny", "data.docs_per_batch=32", "data.buffer_docs=16", "train.dtype=fp32",
]


def fake_state() -> LoopState:
    info = RunInfo(exp=None, cfg=None, dist=None, model=None, tokenizer=None, device=None,
                   device_name="cpu", is_cuda=False, data_dir=Path("."), autocast=None)
    return LoopState(info)


def test_position_is_read_only_for_callbacks():
    state = fake_state()
    for name in ("step", "tokens", "last_batch"):
        with pytest.raises(AttributeError):
            setattr(state, name, 1)
    state.advance(3, 768)
    assert (state.step, state.tokens) == (3, 768)
    state.stop_reason, state.save_requested = "early stop", True  # what callbacks may set
    state.best, state.signals, state.restored_step = {"step": 2}, {"plateau_at": None}, 2
    heard = []
    state.listen(heard.append)
    state.say("hello")
    assert heard == ["hello"]


def test_callback_list_dispatches_every_hook_in_order():
    hooks = [n for n, _ in inspect.getmembers(Callback, inspect.isfunction) if n.startswith("on_")]
    assert set(hooks) <= set(vars(CallbackList))  # a new hook must be dispatched too
    calls = []

    class Rec(Callback):
        def __init__(self, tag):
            self.tag = tag

        def __getattribute__(self, name):
            if name.startswith("on_"):
                return lambda *args: calls.append((object.__getattribute__(self, "tag"), name,
                                                   args[1:]))
            return object.__getattribute__(self, name)

    cbs = CallbackList([Rec("a"), Rec("b")])
    state = fake_state()
    cbs.on_step_end(state, 5, {"loss": 1.0})
    cbs.on_message(state, "hi")
    assert calls == [("a", "on_step_end", (5, {"loss": 1.0})), ("b", "on_step_end",
                     (5, {"loss": 1.0})), ("a", "on_message", ("hi",)), ("b", "on_message",
                                                                          ("hi",))]


class Recorder(Callback):
    """Records the hooks a run calls; stops the run after step ``stop_at`` and asks for a
    checkpoint at ``save_at``."""

    def __init__(self, stop_at: int, save_at: int) -> None:
        self.events: list[tuple[str, int]] = []
        self.stop_at, self.save_at = stop_at, save_at
        self.types: set[type] = set()

    def on_train_start(self, state):
        self.types.add(type(state))
        self.events.append(("start", state.step))

    def on_step_start(self, state, step):
        self.events.append(("step_start", step))

    def on_after_backward(self, state, step):
        assert state.last_batch is not None and state.last_batch[0].shape == (4, 32)
        self.events.append(("backward", step))

    def on_eval(self, state, step, evals):
        assert "val_bpb" in evals
        self.events.append(("eval", step))

    def on_step_end(self, state, step, record):
        assert state.step == step
        self.events.append(("end", step))
        if step == self.save_at:
            state.save_requested = True
        if step == self.stop_at:
            state.stop_reason = "early stop"

    def on_checkpoint(self, state, step, folder):
        assert folder == state.run.exp.checkpoint_dir(step) and folder.is_dir()
        self.events.append(("checkpoint", step))

    def on_train_end(self, state, status):
        self.events.append((status, state.step))


def test_a_run_calls_the_hooks_with_its_state(home):
    from backlm.config import RunConfig, load_config
    from backlm.train.launch import create_experiment
    from backlm.train.loop import run

    cfg = load_config(RunConfig, overrides=[*TINY, "id=seam", "train.max_steps=10"],
                      flags={"log": {"wandb": "off"}})
    exp = create_experiment(cfg, home / "exps", say=lambda text: None)
    rec = Recorder(stop_at=3, save_at=1)
    summary = run(exp, cfg, callbacks=lambda state: [], observers=[rec])
    assert rec.types == {LoopState}
    assert rec.events == [
        ("start", 0), ("eval", 0), ("end", 0),
        ("step_start", 1), ("backward", 1), ("end", 1), ("checkpoint", 1),
        ("step_start", 2), ("backward", 2), ("eval", 2), ("end", 2),
        ("step_start", 3), ("backward", 3), ("end", 3), ("checkpoint", 3),
        ("early stop", 3)]
    assert summary.status == "early stop" and summary.steps == 3
    assert exp.checkpoint_steps() == [1, 3]
    assert not exp.metrics_path.exists()  # no logger was asked for: nothing was logged
