"""``backlm 5cat``: judging a checkpoint as another direction, and user errors as one line.

Builds its own small docstring dataset and tiny forward model (tests/fivecat shares another).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, fivecat_home
from tests.helpers import fivecat_cli as cli
from tests.helpers import fivecat_command as fivecat
from tests.helpers import fivecat_trained as _trained


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """BACKLM_HOME with the ``stdlib`` dataset (val: every 10th document; OOD: help topics)."""
    with fivecat_home(tmp_path_factory.mktemp("fivecat-cmd")) as root:
        yield root


@pytest.fixture(scope="module")
def forward(home) -> Path:
    return _trained(home, "forward", "fwd")


def test_direction_override_judges_a_checkpoint_as_another_direction(forward):
    code, out, result = fivecat(forward, "--direction", "backward", "--max-samples", "8")
    assert code == 1 and "DIRECTION INVERTED" in out
    assert result["direction"] == "backward" and result["checkpoint_direction"] == "forward"
    assert (forward / "evaluations/base/fivecat/step_000100_as-backward.json").is_file()


def test_bad_input_is_one_line_exit_2(forward):
    assert_user_error(cli("5cat", "nope"), "no experiment 'nope'")
    assert_user_error(cli("5cat", "fwd", "--step", "7"), "no checkpoint at step 7")
    assert_user_error(cli("5cat", "fwd", "--max-samples", "1"), "--max-samples")
    assert_user_error(cli("5cat", "fwd", "--direction", "sideways"), "unknown direction")
    moved = forward.parent / "moved"
    shutil.copytree(forward, moved)
    meta = json.loads((moved / "metadata.json").read_text())
    (moved / "metadata.json").write_text(json.dumps(dict(meta, data_dir=str(moved / "gone"))))
    assert_user_error(cli("5cat", "moved"), "does not exist")
