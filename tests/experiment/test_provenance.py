"""What metadata records about where a run came from."""

from __future__ import annotations

import re
import sys

from backlm.experiment import provenance


def test_environment_and_command_line(monkeypatch):
    env = provenance.environment()
    assert set(env) == {"python", "torch", "cuda", "host", "platform"}
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    monkeypatch.setattr(sys, "argv", ["/usr/bin/backlm", "train", "--depth", "4"])
    assert provenance.command_line() == "backlm train --depth 4"


def test_git_commit_is_a_hash_or_none():
    commit = provenance.git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
