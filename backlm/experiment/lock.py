"""The run lock: one file naming the holder's pid and host keeps a second run out."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Any

from backlm.errors import UserError


class RunLock:
    """An exclusive lock file naming the holder's pid and host.

    A lock left by a dead process on this host is stale and taken over; a live holder (or a
    holder on another host) makes the second run fail with a UserError.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`UserError` naming its live holder."""
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check_free()
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale lock of a dead run
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError(f"could not lock experiment {self.path.parent.name}")

    def check_free(self) -> None:
        """Raise :class:`UserError` naming the live holder, if there is one (writes nothing)."""
        holder = self._holder()
        if holder and self._alive(holder):
            raise UserError(
                f"experiment {self.path.parent.name} is in use by pid {holder.get('pid')} "
                f"on {holder.get('host')} since {holder.get('since', '?')}; wait for it to "
                f"finish or use another --id")

    def active(self) -> bool:
        """Whether a live process holds this lock."""
        holder = self._holder()
        return bool(holder) and self._alive(holder)

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot tell: be safe
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, KeyError, TypeError):
            return True
        return True

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
