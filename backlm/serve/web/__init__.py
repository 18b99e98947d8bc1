"""The chat page ``backlm serve`` shows at ``/`` (package data)."""
