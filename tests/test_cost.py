"""What a run costs: prices, evaluation passes, estimates, and ``train --estimate-only``."""

from __future__ import annotations

from tests.helpers import run_cli, tiny_args


def test_estimate_only_creates_nothing(home):
    res = run_cli(tiny_args("--direction", "forward", "--id", "est", "--estimate-only"))
    assert res.exit_code == 0, res.output
    for word in ("parameters", "FLOPs per token", "planned tokens", "wall time", "GPU-hours"):
        assert word in res.output
    assert not (home / "exps" / "est").exists()
    gpu = run_cli(tiny_args("--direction", "forward", "--estimate-only", "--set", "cost.gpu=h100"))
    assert gpu.exit_code == 0 and "$" in gpu.output and "H100" in gpu.output
    bad = run_cli(tiny_args("--direction", "forward", "--estimate-only", "--set", "cost.gpu=tpu"))
    assert bad.exit_code == 2 and "unknown cost.gpu" in bad.output
