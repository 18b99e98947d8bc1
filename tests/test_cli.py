"""The command line: every command is there, and --help stays fast (no torch import)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from backlm import __version__
from backlm.cli import app

COMMANDS = ("data", "train", "5cat", "ls", "eval", "note", "log")


def test_help_lists_every_command_and_version():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output
    assert CliRunner().invoke(app, ["--version"]).output.strip() == f"backlm {__version__}"


def test_help_imports_no_heavy_module():
    code = ("import sys; from backlm.cli import app; heavy = {'torch', 'h5py', 'wandb'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
