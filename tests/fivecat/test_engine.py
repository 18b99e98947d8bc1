"""5CAT on tiny models trained on real text: trained models pass, broken ones fail.

One small corpus (docstrings of a few standard-library packages; the interpreter's help topics
as OOD) and one tiny model per direction are built once for tests/fivecat (conftest.py).
"""

from __future__ import annotations

import shutil

import pytest

from backlm.direction import Direction
from tests.helpers import fivecat_command as fivecat
from tests.helpers import fivecat_trained as _trained


def test_forward_model_passes(forward):
    code, out, result = fivecat(forward)
    assert code == 0, out
    assert "5CAT 5/5" in out and result["passed"] and result["gates_passed"] == 5
    assert {r["split"] for r in result["rows"]} == {"val", "ood", "val~ood"}
    assert (forward / "evaluations" / "base" / "fivecat" / "step_000100.json").is_file()
    assert "DIRECTION INVERTED" not in out


def test_mislabeled_model_fails_gate_b_with_the_inversion_warning(mislabeled):
    code, out, result = fivecat(mislabeled)
    assert code == 1, out
    assert "DIRECTION INVERTED" in out
    b_rows = [r for r in result["rows"] if r["gate"] == "B"]
    assert b_rows and all(r["value"] < 0 and not r["passed"] for r in b_rows)
    assert result["inverted"] and not result["gates"]["B"]["passed"]
    assert result["checkpoint_direction"] == "backward"


def test_untrained_model_fails(home, forward):
    from backlm.config import ModelConfig
    from backlm.fivecat import load_spec, run_fivecat
    from backlm.model.gpt import GPT
    from backlm.tokenizer import Tokenizer

    tok = Tokenizer.load(forward / "tokenizer")
    cfg = ModelConfig(depth=2, width=64, head_dim=32, seq_len=64, vocab_size=tok.vocab_size)
    result = run_fivecat(GPT(cfg).eval(), tok, Direction.FORWARD, home / "home/data/stdlib",
                         load_spec())
    assert not result.passed and result.passed_count <= 2
    for gate in "ABCD":
        assert not result.gate_passed(gate), gate
    assert not result.inverted  # a model that learned nothing is not "inverted"


def test_missing_ood_falls_back_to_train_with_a_warning(home, forward):
    from backlm.experiment.loading import load_model
    from backlm.fivecat import load_spec, run_fivecat

    data = home / "home" / "data"
    shutil.copytree(data / "stdlib", data / "no-ood", ignore=shutil.ignore_patterns("ood_*"))
    lm = load_model(forward, device="cpu")
    spec = load_spec().with_max_samples(8)
    result = run_fivecat(lm.model, lm.tokenizer, Direction.FORWARD, data / "no-ood", spec)
    assert any("no ood_*.parquet" in w and "TRAIN" in w for w in result.warnings)
    assert {r.split for r in result.rows} == {"val", "val~train"}
    assert result.sets.keys() == {"val", "train"}


@pytest.mark.slow
def test_bidirectional_model_passes_every_gate_per_marker(home):
    exp = _trained(home, "bidirectional", "bidi", steps=200)
    code, out, result = fivecat(exp)
    assert code == 0, out
    markers = {(r["split"], r["marker"]) for r in result["rows"]}
    assert markers == {(s, m) for s in ("val", "ood", "val~ood") for m in ("forward", "backward")}
    assert any(r["figure"] == "marker margin" and r["passed"] for r in result["rows"])
