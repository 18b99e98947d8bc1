"""The evaluation runner: direction rows of a report and the optional research-log append."""

from __future__ import annotations

import sys
from pathlib import Path

from backlm.evaluation import runner
from backlm.evaluation.lm import loader_direction


def test_research_log_is_optional(monkeypatch, tmp_path):
    calls = []
    fake = type(sys)("backlm.logs.hdf5")
    fake.append_eval = lambda path, kind, step, values: calls.append((path.name, kind, step,
                                                                      values))
    exp = tmp_path / "exp"
    exp.mkdir()
    result = runner.TaskResult("lm", "backward", True, {"val_loss": 3.0, "n": 2, "native": True,
                                                        "metric": "val_loss"}, Path("x"))
    report = runner.EvalReport("e", exp, "base", 9, "backward", ["backward"], [result])
    monkeypatch.setitem(sys.modules, "backlm.logs.hdf5", None)  # module absent: skipped
    assert runner.log_to_research_log(report) is False
    monkeypatch.setitem(sys.modules, "backlm.logs.hdf5", fake)
    assert runner.log_to_research_log(report) is False  # no research log: nothing written
    (exp / "base.h5").write_bytes(b"")  # stands in for the log a training run writes
    assert runner.log_to_research_log(report) is True
    assert calls == [("base.h5", "lm", 9, {"backward/val_loss": 3.0, "backward/n": 2.0})]


def test_loader_directions_and_rows_for_bidirectional_models():
    assert loader_direction("bidirectional", "forward") == ("bidirectional", 0.0)
    assert loader_direction("bidirectional", "backward") == ("bidirectional", 1.0)
    assert loader_direction("forward", "backward") == ("backward", 0.0)
    report = runner.EvalReport("b", Path("."), "base", 1, "bidirectional",
                               ["forward", "backward"])
    for d in ("forward", "backward"):
        report.results.append(runner.TaskResult("mmlu", d, True, {"score": 0.5, "metric": "acc"},
                                                Path(d)))
    row = runner.direction_rows(report)[0]
    assert row["scores"] == {"forward": 0.5, "backward": 0.5} and row["gap"] is None
