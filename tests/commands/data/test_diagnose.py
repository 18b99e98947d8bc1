"""``backlm data diagnose`` user errors: no data, unknown direction."""

from __future__ import annotations

from typer.testing import CliRunner

from backlm.cli import app


def test_diagnose_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "backward"])
    assert res.exit_code == 2 and res.output.startswith("error:") and "prepare" in res.output
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "upward"])
    assert res.exit_code == 2 and "unknown direction" in res.output
