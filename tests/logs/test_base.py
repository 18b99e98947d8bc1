"""The logger interface: every back end implements it, and the null logger does nothing."""

from __future__ import annotations

from backlm.logs.base import MetricLogger, NullLogger
from backlm.logs.hdf5 import Hdf5Logger
from backlm.logs.jsonl import JsonlLogger
from backlm.logs.wandb_log import WandbLogger


def test_back_ends_share_the_interface():
    for cls in (JsonlLogger, Hdf5Logger, WandbLogger, NullLogger):
        assert issubclass(cls, MetricLogger)
        for hook in ("log", "flush", "close"):
            assert callable(getattr(cls, hook))
    null = NullLogger()
    assert null.log(1, {"loss": 1.0}) is None and null.flush() is None and null.close() is None
