"""The evaluation runner: direction rows of a report and the optional research-log append."""

from __future__ import annotations

from pathlib import Path

from backlm.evaluation import runner
from backlm.experiment.folder import Experiment


def test_research_log_is_optional(monkeypatch, tmp_path):
    import backlm.logs.hdf5 as hdf5
    from backlm.errors import UserError

    calls = []
    monkeypatch.setattr(hdf5, "append_eval", lambda path, kind, step, values, writer_elsewhere:
                        calls.append((path.name, kind, step, values, writer_elsewhere)))
    exp = Experiment(tmp_path / "exp")
    exp.path.mkdir()
    result = runner.TaskResult("lm", "backward", True, {"val_loss": 3.0, "n": 2, "native": True,
                                                        "metric": "val_loss"}, Path("x"))
    report = runner.EvalReport(exp, "base", 9, "backward", ["backward"], [result])
    assert runner.log_to_research_log(report) is False  # no research log: nothing written
    assert calls == []
    exp.research_log("base").write_bytes(b"")  # stands in for the log a training run writes
    assert runner.log_to_research_log(report) is True
    assert calls == [("base.h5", "lm", 9, {"backward/val_loss": 3.0, "backward/n": 2.0}, False)]

    def refuse(*args, **kwargs):
        raise UserError("being written by a live training run")

    monkeypatch.setattr(hdf5, "append_eval", refuse)
    assert runner.log_to_research_log(report) is False  # the JSON results stand either way
    assert "research log not updated: being written" in report.notes[-1]


def test_direction_rows_for_bidirectional_models():
    report = runner.EvalReport(Experiment(Path("b")), "base", 1, "bidirectional",
                               ["forward", "backward"])
    for d in ("forward", "backward"):
        report.results.append(runner.TaskResult("mmlu", d, True, {"score": 0.5, "metric": "acc"},
                                                Path(d)))
    row = runner.direction_rows(report)[0]
    assert row["scores"] == {"forward": 0.5, "backward": 0.5} and row["gap"] is None
