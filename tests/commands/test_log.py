"""``backlm log`` user errors: one line, exit code 2."""

from __future__ import annotations

from tests.helpers import run_cli, tiny_args


def _one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert "Traceback" not in res.output and len(lines) == 1
    assert lines[0].startswith("error:") and needle in res.output, res.output


def test_log_user_errors(home):
    from backlm.atomic import write_json

    _one_line_error(run_cli(["log", "ghost"]), "no experiment 'ghost'")
    exp = home / "exps" / "bare"
    exp.mkdir(parents=True)
    write_json(exp / "metadata.json", {"id": "bare", "phase": "base", "status": "finished"})
    _one_line_error(run_cli(["log", "bare"]), "has no research log base.h5")
    (exp / "base.h5").write_bytes(b"not an hdf5 file at all")
    _one_line_error(run_cli(["log", "bare"]), "corrupt")
    _one_line_error(run_cli(tiny_args("--wandb", "sideways")), "unknown wandb mode")
