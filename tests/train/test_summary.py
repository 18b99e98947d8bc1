"""The end-of-run summary: the panel printed and ``training_summary.json``."""

from __future__ import annotations

import json

from tests.helpers import run_cli, tiny_args


def test_summary_panel_and_file(home):
    res = run_cli(tiny_args("--direction", "forward", "--id", "sum", "--set",
                            "cost.usd_per_gpu_hour=2.0", steps=4))
    assert res.exit_code == 0, res.output
    s = json.loads((home / "exps" / "sum" / "training_summary.json").read_text())
    for key in ("stop_reason", "best", "steps", "tokens", "wall_seconds", "tokens_per_sec", "mfu",
                "gpu_hours", "usd", "signals"):
        assert key in s
    assert s["stop_reason"] == "max steps" and s["steps"] == 4 and s["gpu_hours"] == 0.0
    assert s["usd"] == 0.0
    assert "stop reason" in res.output and "max steps" in res.output
