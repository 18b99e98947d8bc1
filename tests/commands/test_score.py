"""``backlm score``: a table or JSON for a trained experiment; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest

from tests.helpers import assert_user_error, run_cli


def test_score_prints_each_order(lineage):
    res = run_cli(["score", "b0", "alpha beta gamma."])
    assert res.exit_code == 0, res.output
    assert "backward" in res.output and "bits per byte" in res.output
    res = run_cli(["score", "b0", "alpha beta gamma.", "--json"])
    data = json.loads(res.output)
    assert data["model"] == "b0" and data["direction"] == "backward"
    r = data["orders"]["backward"]
    assert r["bits_per_byte"] > 0 and len(r["tokens"]) >= 1


@pytest.mark.parametrize(("args", "words"), [
    (["score", "nope", "text"], "no experiment 'nope'"),
    (["score", "b0", ""], "non-empty"),
    (["score", "b0", "word " * 400], "shorter text"),
    (["score", "b0", "text", "--step", "999"], "no checkpoint at step 999"),
])
def test_bad_input_is_one_line(lineage, args, words):
    res = run_cli(args)
    assert_user_error(res, words)
