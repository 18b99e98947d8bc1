"""The config's fields carry their help and ranges; the direction is typed from the start."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from typer.testing import CliRunner

from backlm.cli import app
from backlm.config import (
    DataConfig,
    RunConfig,
    check_ranges,
    from_dict,
    keys,
    load_config,
    show,
    to_yaml,
)
from backlm.direction import Direction
from backlm.errors import UserError


def test_every_key_has_help():
    missing = [k.name for k in keys(RunConfig()) if not k.help]
    assert not missing, f"config keys without help: {missing}"


def test_a_range_is_stated_wherever_one_is_checked():
    assert all(k.need for k in keys(RunConfig()) if k.check)


@pytest.mark.parametrize("text", ["backward", "Backward", " BACKWARD "])
def test_the_direction_is_a_direction_once_read(text):
    cfg = load_config(RunConfig, overrides=[f"data.direction={text}"])
    assert cfg.data.direction is Direction.BACKWARD
    assert DataConfig(direction=text).direction is Direction.BACKWARD


def test_the_direction_is_written_back_as_its_name():
    cfg = load_config(RunConfig, overrides=["data.direction=bidirectional"])
    text = to_yaml(cfg)
    assert yaml.safe_load(text)["data"]["direction"] == "bidirectional"
    assert "Direction" not in text and f"{cfg.data.direction}" == "bidirectional"
    again = from_dict(RunConfig, yaml.safe_load(text))
    assert again.data.direction is Direction.BIDIRECTIONAL


@pytest.mark.parametrize("value", ["sideways", "[1]", "3"])
def test_a_bad_direction_is_refused_naming_the_key(value):
    with pytest.raises(UserError, match="direction"):
        load_config(RunConfig, overrides=[f"data.direction={value}"])


def test_checking_ranges_never_writes_into_the_config():
    cfg = load_config(RunConfig, "cpu-tiny", ["data.direction=backward"])
    before = dataclasses.asdict(cfg)
    check_ranges(cfg)
    assert dataclasses.asdict(cfg) == before


def test_a_value_out_of_its_fields_range_is_refused_with_the_range():
    cfg = load_config(RunConfig, overrides=["data.mix=1.5"])
    with pytest.raises(UserError, match=r"data\.mix must be a probability between 0 and 1"):
        check_ranges(cfg)


def test_show_resolves_preset_and_overrides():
    rows = {k.name: k for k in show("cpu-tiny", ["model.depth=3"])}
    assert rows["model.depth"].value == 3
    assert rows["data.mix"].need == "a probability between 0 and 1"
    assert rows["data.direction"].value is Direction.FORWARD


def test_config_show_prints_every_key_with_help_and_range():
    res = CliRunner().invoke(app, ["config", "show", "cpu-tiny", "--set", "model.depth=3"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "model.depth" in ln)
    assert "3" in line and "transformer blocks" in line and "at least 1" in line
    assert all(k.name in res.output for k in keys(RunConfig()))


def test_config_show_refuses_a_bad_override_in_one_line():
    res = CliRunner().invoke(app, ["config", "show", "--set", "model.nosuch=1"])
    assert res.exit_code == 2
    assert "nosuch" in res.output and "Traceback" not in res.output


def test_config_show_refuses_a_value_out_of_range_as_train_would():
    res = CliRunner().invoke(app, ["config", "show", "--set", "model.depth=-3"])
    assert res.exit_code == 2
    assert "model.depth must be at least 1" in res.output and "Traceback" not in res.output
