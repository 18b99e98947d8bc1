"""The torchrun worker's entry point: it trains from the experiment folder alone."""

from __future__ import annotations

from backlm.train import worker


def test_a_missing_experiment_is_one_line_and_exit_2(tmp_path, capsys):
    assert worker.main(["--experiment", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "config.yaml" in err
