"""``backlm data diagnose`` user errors: no data, unknown direction."""

from __future__ import annotations

from typer.testing import CliRunner

from backlm.cli import app
from tests.helpers import assert_user_error


def test_diagnose_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "backward"])
    assert_user_error(res, "prepare")
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "upward"])
    assert_user_error(res, "unknown direction")
