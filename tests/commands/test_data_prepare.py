"""``backlm data prepare`` from the command line: the summary, an existing dataset left alone,
bad input as a user error."""

from __future__ import annotations

from pathlib import Path

import pytest

from backlm.data import corpus


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))


def test_cli_prepare(fake_site: Path, topics: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from backlm.cli import app

    monkeypatch.setattr(corpus, "default_roots", lambda: [fake_site])
    monkeypatch.setattr(corpus, "default_ood_source", lambda: topics)
    runner = CliRunner()
    args = ["data", "prepare", "--dataset", "cli", "--vocab-size", "300", "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "tokens" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already exists" in again.output
    bad = runner.invoke(app, [*args[:-4], "--vocab-size", "10"])
    assert bad.exit_code == 2 and "at least" in bad.output
