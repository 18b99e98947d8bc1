"""The 5CAT world shared by every test file here: built once for the package, since training
is the slow part (tests/commands/test_fivecat.py builds its own)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import fivecat_home
from tests.helpers import fivecat_trained as _trained


@pytest.fixture(scope="package")
def home(tmp_path_factory) -> Path:
    """BACKLM_HOME with the ``stdlib`` dataset (val: every 10th document; OOD: help topics)."""
    with fivecat_home(tmp_path_factory.mktemp("fivecat")) as root:
        yield root


@pytest.fixture(scope="package")
def forward(home) -> Path:
    return _trained(home, "forward", "fwd")


@pytest.fixture(scope="package")
def backward(home) -> Path:
    """Trained with in-training 5CAT every 50 steps (and the inversion stop armed)."""
    return _trained(home, "backward", "bwd", "--set", "fivecat.every=50",
                    "--stop-on-inversion")


@pytest.fixture(scope="package")
def mislabeled(forward) -> Path:
    """The forward model with a checkpoint that declares it backward."""
    dst = forward.parent / "mislabeled"
    shutil.copytree(forward, dst)
    for meta_path in dst.glob("checkpoints/step_*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps(dict(meta, direction="backward")))
    return dst
