"""Placeholder until implemented."""

from backlm.ui import user_errors


@user_errors
def train() -> None:
    """Not implemented yet."""
    raise SystemExit(1)
