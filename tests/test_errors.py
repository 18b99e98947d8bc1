"""User errors carry the CLI's exit code 2 and their message as given."""

from __future__ import annotations

import pytest

from backlm.errors import UserError


def test_user_error_exit_code_and_message():
    err = UserError("no experiment 'ghost'")
    assert UserError.exit_code == err.exit_code == 2
    assert isinstance(err, Exception) and str(err) == "no experiment 'ghost'"

    class Narrower(UserError):
        pass

    with pytest.raises(UserError) as caught:
        raise Narrower("x")
    assert caught.value.exit_code == 2
