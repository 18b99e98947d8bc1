"""Advice is tested: an error that tells the user to run a command names one that helps. Each
test provokes the error, runs the suggested command (after the fix the message names), and
checks that it gets past that error."""

from __future__ import annotations

import errno
import re

import pytest

from tests.helpers import assert_user_error, run_cli, tiny_args


def suggested(line: str) -> list[str]:
    """The backlm commands a message suggests, as argument lists (``backlm`` left off)."""
    return [c.split()[1:] for c in re.findall(r"`(backlm [^`]+)`", line)]


@pytest.mark.slow  # trains twice (~15 s)
def test_a_full_disk_at_the_first_checkpoint_advises_running_the_command_again(
        home, monkeypatch):
    from backlm.experiment import checkpoint as ckpt
    from backlm.experiment import weights

    real = weights.write

    def full(path, *args, **kw):
        if str(path).endswith(ckpt.OPTIM_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kw)

    monkeypatch.setattr(weights, "write", full)
    args = tiny_args("--direction", "forward", "--id", "first", steps=2)
    res = run_cli(args)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    line = res.stderr.strip()
    for fragment in ("no space left on device", "has no checkpoint yet", "so it is removed",
                     "run the same command again"):
        assert fragment in line, line
    assert "--resume" not in line and suggested(line) == []
    assert not (home / "exps" / "first").exists()  # removed: a resume could not find it
    assert_user_error(run_cli(["train", "--resume", "first"]), "first")
    monkeypatch.setattr(weights, "write", real)  # space freed: the same command now works
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    assert (home / "exps" / "first" / "checkpoints").is_dir()
