"""``backlm note`` user errors: one line, exit code 2."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize("args,needle", [
    (["note", "ghost", "text"], "no experiment 'ghost'"),
    (["note", "e1", "   "], "the note is empty"),
])
def test_note_user_errors(exps, args, needle):
    res = run_cli(args)
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in res.output
