"""``backlm quickstart``: three directions with one seed, 5CAT on each, and a rerun that
continues where a Ctrl-C stopped it (finished models and 5CAT results kept)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from matplotlib.image import imread

from tests.helpers import FIVECAT_TINY, assert_user_error, fivecat_cli, fivecat_home

STEPS = 30
ARGS = ["quickstart", "--steps", str(STEPS), "--prefix", "qs"]
for setting in FIVECAT_TINY:
    ARGS += ["--set", setting]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    with fivecat_home(tmp_path_factory.mktemp("quickstart")) as root:
        yield root


@pytest.mark.slow
def test_a_stopped_quickstart_continues_and_a_finished_one_changes_nothing(home, monkeypatch):
    exps = home / "exps"
    monkeypatch.setenv("BACKLM_INTERRUPT_AT_STEP", "12")  # Ctrl-C in the first model
    res = fivecat_cli(*ARGS)
    assert res.exit_code == 130, res.output
    assert "again" in res.output
    forward = exps / "qs-d2-forward-s0"  # a sweep's member: depth 2 from FIVECAT_TINY
    assert json.loads((forward / "metadata.json").read_text())["status"] == "interrupted"
    assert not (exps / "qs-d2-backward-s0").exists()
    monkeypatch.delenv("BACKLM_INTERRUPT_AT_STEP")

    res = fivecat_cli(*ARGS)
    assert res.exit_code == 0, res.output
    for direction in ("forward", "backward", "bidirectional"):
        exp = exps / f"qs-d2-{direction}-s0"
        meta = json.loads((exp / "metadata.json").read_text())
        assert meta["status"] == "finished" and meta["direction"] == direction
        config = (exp / "config.yaml").read_text()
        assert "seed: 0" in config
        (result,) = exp.glob("evaluations/base/fivecat/*.json")
        assert json.loads(result.read_text())["direction"] == direction
        assert f"qs-d2-{direction}-s0" in res.output
    steps = [json.loads(line)["step"] for line in
             (forward / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert steps[-1] == STEPS and len(set(steps)) == len(steps)  # resumed, not restarted

    summary = exps / "sweeps" / "qs" / "SWEEP.md"
    report = summary.parent / "comparison" / "COMPARISON.md"
    text = report.read_text()
    assert all(f"qs-d2-{d}-s0" in text for d in ("forward", "backward", "bidirectional"))
    assert "CI" in text or "interval" in text.lower()
    pngs = list(report.parent.glob("*.png"))
    assert pngs and (report.parent / "comparison.csv").is_file()
    for png in pngs:  # every figure has data drawn in it, not just a blank canvas
        pixels = imread(png)[..., :3].reshape(-1, 3)
        assert (pixels.std(axis=0) > 0.01).any() and (pixels.min(axis=1) < 0.9).mean() > 0.01
    assert str(summary) in res.output.replace("\n", "") and "5CAT" in summary.read_text()

    tree = [*exps.rglob("*"), *report.parent.rglob("*")]
    stamps = {p: os.stat(p).st_mtime_ns for p in tree if p.is_file()}
    res = fivecat_cli(*ARGS)  # everything is done: nothing trains, nothing is rewritten
    assert res.exit_code == 0, res.output
    assert {p: os.stat(p).st_mtime_ns for p in tree if p.is_file()} == stamps


@pytest.mark.parametrize(("args", "words"), [
    (["--steps", "0"], "--steps"), (["--set", "model.depth=abc"], "depth"),
    (["--prefix", "bad/id"], "id"),
])
def test_bad_options_are_one_line_and_write_nothing(home, args, words):
    res = fivecat_cli("quickstart", *args)
    assert_user_error(res, words)
    assert not (home / "exps").exists() or not any((home / "exps").glob("bad*"))
