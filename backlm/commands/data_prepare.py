"""Placeholder until implemented."""

from backlm.ui import user_errors


@user_errors
def prepare() -> None:
    """Not implemented yet."""
    raise SystemExit(1)
