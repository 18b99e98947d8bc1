"""``backlm note`` user errors: one line, exit code 2."""

from __future__ import annotations

import pytest

from tests.helpers import assert_user_error, run_cli


@pytest.mark.parametrize("args,needle", [
    (["note", "ghost", "text"], "no experiment 'ghost'"),
    (["note", "e1", "   "], "the note is empty"),
])
def test_note_user_errors(exps, args, needle):
    res = run_cli(args)
    assert_user_error(res, needle)
