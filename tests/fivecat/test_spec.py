"""5CAT specs: the calibrated default, custom files, bad keys rejected, ``with_max_samples``."""

from __future__ import annotations

from pathlib import Path

import pytest

from backlm.errors import UserError
from backlm.fivecat.spec import Samples, Thresholds, load_spec


def test_default_spec_is_the_calibrated_file():
    spec = load_spec()
    assert Path(spec.source).parts[-2:] == ("configs", "fivecat.yaml")
    assert load_spec("fivecat") == spec  # by preset name too


def test_a_custom_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "strict.yaml"
    path.write_text("thresholds:\n  direction_margin: 0.2\n"
                    "samples:\n  max_samples: 6\n  horizon: 2\n")
    spec = load_spec(path)
    assert spec.thresholds.direction_margin == 0.2
    assert spec.thresholds.offset_margin == Thresholds().offset_margin
    assert (spec.samples.max_samples, spec.samples.horizon) == (6, 2)
    assert spec.samples.window == Samples().window and spec.source == str(path)


@pytest.mark.parametrize("text, message", [
    ("thresholds:\n  direction_margn: 0.1\n", "unknown config key 'thresholds.direction_margn'"),
    ("gates:\n  A: 1\n", "unknown config key 'gates'"),
    ("samples:\n  horizon: soon\n", "expects int"),
    ("samples:\n  max_samples: 1\n", "max_samples ≥ 2"),
    ("samples:\n  window: 4\n", "window ≥ 8"),
    ("samples:\n  ablate_last: 16\n  min_tokens: 18\n", "min_tokens must exceed"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_specs_are_rejected(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_spec(path)


def test_a_missing_spec_names_the_known_presets(tmp_path):
    with pytest.raises(UserError, match="does not exist.*fivecat"):
        load_spec(tmp_path / "nope.yaml")


def test_with_max_samples_is_a_copy():
    spec = load_spec()
    before = spec.samples.max_samples
    assert spec.with_max_samples(None) is spec
    small = spec.with_max_samples(6)
    assert small.samples.max_samples == 6 and spec.samples.max_samples == before
    assert small.samples.window == spec.samples.window and small.thresholds == spec.thresholds
    assert small.source == spec.source
    with pytest.raises(UserError, match="--max-samples must be at least 2, got 1"):
        spec.with_max_samples(1)
