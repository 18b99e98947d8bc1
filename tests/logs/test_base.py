"""The logger interface as training drives it (through LoggingCallback): every back end gets the
logged steps, makes them durable at a checkpoint and finishes on close; the null logger takes
the same calls and does nothing."""

from __future__ import annotations

from types import SimpleNamespace

from backlm.logs import LoggingCallback
from backlm.logs.base import NullLogger
from backlm.logs.jsonl import JsonlLogger, read
from backlm.logs.wandb_log import WandbLogger
from tests.helpers import hdf5_logger, read_h5

# log_every=2: steps 0, 2 and 4 are logged, and step 3 for its validation loss
STEPS = [(0, {"loss": 4.0}), (1, {"loss": 3.5}), (2, {"loss": 3.0}),
         (3, {"loss": 2.5, "val_loss": 2.8}), (4, {"loss": 2.0, "ok": True})]
LOGGED = [0, 2, 3, 4]


class FakeRun:
    """What WandbLogger uses of a wandb run."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.finished = 0

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished += 1


def train(loggers, checkpoint_after: int = 4, until: int = 4, end: bool = True) -> None:
    """Feed ``STEPS`` to ``loggers`` the way the training loop's callbacks do."""
    state = SimpleNamespace(run=SimpleNamespace(cfg=SimpleNamespace(
        train=SimpleNamespace(log_every=2))))
    callback = LoggingCallback(loggers)
    for step, record in STEPS[:until + 1]:
        callback.on_step_end(state, step, record)
        if step == checkpoint_after:
            callback.on_before_checkpoint(state, step)
    if end:
        callback.on_train_end(state, "finished")


def test_every_back_end_receives_the_logged_steps(tmp_path):
    jsonl, h5, run, warnings = tmp_path / "metrics.jsonl", tmp_path / "base.h5", FakeRun(), []
    train([JsonlLogger(jsonl), hdf5_logger(h5, flush_every=100), WandbLogger(run, warnings.append),
           NullLogger()])
    assert [r["step"] for r in read(jsonl)] == LOGGED
    assert read(jsonl)[2] == {"step": 3, "loss": 2.5, "val_loss": 2.8}
    with read_h5(h5) as f:
        assert f["scalars/step"][:].tolist() == LOGGED
        assert f["scalars/loss"][:].tolist() == [4.0, 3.0, 2.5, 2.0]
        assert f["eval/step"][:].tolist() == [3] and f["eval/value"][:].tolist() == [2.8]
    # wandb gets numbers only (a bool is no metric) and is finished exactly once
    assert [s for s, _ in run.logged] == LOGGED and run.logged[-1] == (4, {"loss": 2.0})
    assert run.finished == 1 and not warnings


def test_a_checkpoint_makes_what_was_logged_durable(tmp_path):
    # the research log buffers rows; a kill after the checkpoint must not lose the steps
    # before it, since the resumed run starts after them
    h5, jsonl = tmp_path / "base.h5", tmp_path / "metrics.jsonl"
    loggers = [hdf5_logger(h5, flush_every=100), JsonlLogger(jsonl)]
    train(loggers, checkpoint_after=2, until=3, end=False)
    with read_h5(h5) as f:
        assert f["scalars/step"][:].tolist() == [0, 2]  # step 3 came after the checkpoint
    assert [r["step"] for r in read(jsonl)] == [0, 2, 3]
    for logger in loggers:
        logger.close()


def test_the_null_logger_takes_every_call_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    null = NullLogger()
    train([null])
    assert null.log(5, {"loss": 1.0}) is None and not any(tmp_path.iterdir())
