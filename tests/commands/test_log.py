"""``backlm log`` user errors: one line, exit code 2."""

from __future__ import annotations

from tests.helpers import assert_user_error, run_cli


def test_log_user_errors(home):
    from backlm.atomic import write_json

    assert_user_error(run_cli(["log", "ghost"]), "no experiment 'ghost'")
    exp = home / "exps" / "bare"
    exp.mkdir(parents=True)
    write_json(exp / "metadata.json", {"id": "bare", "phase": "base", "status": "finished"})
    assert_user_error(run_cli(["log", "bare"]), "has no research log base.h5")
    (exp / "base.h5").write_bytes(b"not an hdf5 file at all")
    assert_user_error(run_cli(["log", "bare"]), "corrupt")
    assert_user_error(run_cli(["train", "--wandb", "sideways"]), "unknown wandb mode")
