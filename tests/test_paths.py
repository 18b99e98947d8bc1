"""Where backlm keeps data and experiments: BACKLM_HOME and BACKLM_EXPERIMENTS."""

from __future__ import annotations

from pathlib import Path

import pytest

from backlm import paths


def test_data_lives_under_backlm_home(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "h"))
    assert paths.backlm_home() == tmp_path / "h"
    assert paths.data_root() == tmp_path / "h" / "data"
    assert paths.dataset_dir() == tmp_path / "h" / "data" / paths.DEFAULT_DATASET == \
        tmp_path / "h" / "data" / "pydocs"
    assert paths.dataset_dir("mine") == tmp_path / "h" / "data" / "mine"
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "other"))  # read at each call
    assert paths.dataset_dir("mine") == tmp_path / "other" / "data" / "mine"


@pytest.mark.parametrize("value", [None, ""])
def test_home_defaults_to_the_user_cache(monkeypatch, tmp_path, value):
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("BACKLM_HOME", raising=False)
    else:
        monkeypatch.setenv("BACKLM_HOME", value)  # set but empty: the default too
    assert paths.backlm_home() == tmp_path / ".cache" / "backlm"
    assert paths.dataset_dir("x") == tmp_path / ".cache" / "backlm" / "data" / "x"


def test_experiments_root(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(tmp_path / "e"))
    assert paths.experiments_root() == tmp_path / "e"
    monkeypatch.setenv("BACKLM_EXPERIMENTS", "")
    assert paths.experiments_root() == Path("experiments")
    monkeypatch.delenv("BACKLM_EXPERIMENTS")
    assert paths.experiments_root() == Path("experiments")  # relative to the working folder
