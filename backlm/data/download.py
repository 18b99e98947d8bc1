"""Fetch public shards over HTTP(S): resumable, retried, verified and renamed atomically.

:func:`download_file` streams a URL into ``<dest>.part`` (resumed with a ``Range`` request),
retries network failures with exponential backoff, checks size and sha256, then renames.
:func:`download_dataset` turns the first N shards of a named dataset into ``train_*`` and
``val_*`` shards and records each one's source in ``download.json``, so a rerun skips,
replaces or removes exactly the right files. Only the standard library (urllib) is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from backlm import __version__
from backlm.atomic import fsync_dir
from backlm.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock on Windows: concurrent runs are unguarded
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20
MAX_DELAY = 60.0
USER_AGENT = f"backlm/{__version__} (python-urllib)"
_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadCancelled(Exception):
    """Raised in a download whose ``cancel`` event was set; the ``.part`` file is kept."""


class _Transient(Exception):
    """A failure worth retrying: network hiccup, timeout, 5xx, 429, short read, bad range."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Corrupt(UserError):
    """The bytes received are not the wanted file; the ``.part`` must not be resumed."""


@dataclass(frozen=True)
class _Policy:
    retries: int
    backoff: float
    timeout: float
    expected_size: int | None
    cancel: threading.Event | None


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` accumulate until the download is complete and verified."""
    return dest.with_suffix(dest.suffix + ".part")


def download_file(
    url: str,
    dest: str | Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30,
    progress: Callable[[int, int | None], None] | None = None,
    validate: Callable[[Path], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` and retrying transient failures.

    ``progress(done, total)`` is called as bytes arrive (``total`` None when unknown).
    ``validate(part)`` runs on the complete file before the rename; if it raises, the file is
    deleted. A ``dest`` that already exists is returned untouched. A 4xx answer (not 416/429)
    raises :class:`UserError` at once; so does a failure repeated ``retries`` times in a row
    without progress, keeping the ``.part`` for the next run.
    """
    dest = Path(dest)
    if dest.exists():
        if expected_size is not None and dest.stat().st_size != expected_size:
            raise UserError(f"{dest} exists but is not {expected_size} bytes; delete it and rerun")
        return dest
    _check_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    try:
        with _locked(part) as f:
            total = _fetch(url, f, _Policy(retries, backoff, timeout, expected_size, cancel),
                           progress)
            os.fsync(f.fileno())
        _verify(part, url, total, expected_size, sha256)
        if validate is not None:
            try:
                validate(part)
            except Exception as exc:
                raise _Corrupt(str(exc)) from None
        os.replace(part, dest)
    except _Corrupt:
        part.unlink(missing_ok=True)
        raise
    except BaseException as exc:
        # An empty .part holds nothing worth resuming; a non-empty one is kept for next time.
        with contextlib.suppress(OSError):
            if part.stat().st_size == 0:
                part.unlink()
        if isinstance(exc, OSError):  # network errors never get here: _fetch handles them
            raise UserError(f"cannot write {part}: {exc.strerror or exc}; check free disk "
                            "space and permissions") from None
        raise
    fsync_dir(dest.parent)
    return dest


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_url(url: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise UserError(f"cannot download {url!r}: only http:// and https:// URLs are supported")


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[BinaryIO]:
    # Append mode keeps earlier bytes for resuming; the lock stops a second process from
    # appending to the same .part at the same time.
    with open(part, "ab") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UserError(f"{part} is being written by another download; "
                                "wait for it to finish") from None
        yield f
        f.flush()


def _size(f: BinaryIO) -> int:
    f.flush()
    return os.fstat(f.fileno()).st_size


def _truncate(f: BinaryIO) -> None:
    f.flush()
    f.truncate(0)
    f.seek(0)


def _fetch(url: str, f: BinaryIO, policy: _Policy, progress) -> int | None:
    failures, high = 0, _size(f)
    while True:
        try:
            return _attempt(url, f, policy, progress)
        except _Transient as exc:
            if _size(f) > high:
                # Bytes arrived before the failure, so the link works: keep resuming.
                high, failures = _size(f), 0
            failures += 1
            if failures > policy.retries:
                raise UserError(f"gave up on {url} after {failures} failed attempts ({exc}); "
                                "check the network or --base-url, then rerun to resume") from None
            delay = policy.backoff * 2 ** (failures - 1)
            delay = min(MAX_DELAY, max(delay, exc.retry_after or 0.0))
            if (policy.cancel or threading.Event()).wait(delay):
                raise DownloadCancelled() from None


def _attempt(url: str, f: BinaryIO, policy: _Policy, progress) -> int | None:
    """One request appending to ``f``; returns the file's total size (None if unknown)."""
    offset = _size(f)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=policy.timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            return _http_error(url, exc, offset, f)
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise _Transient(_reason(exc)) from None
    with resp:
        length = _int(resp.headers.get("Content-Length"))
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                _truncate(f)
                raise _Transient(f"server sent bytes from {start}, not {offset}; starting over")
        else:
            # A 200 to a Range request carries the whole file: start again from byte 0.
            _truncate(f)
            total = length
        if policy.expected_size not in (None, total) and total is not None:
            raise _Corrupt(f"{url} is {total} bytes, not the expected {policy.expected_size}; "
                           "check --base-url")
        _copy(resp, f, length, total, progress, policy.cancel)
    return total


def _copy(resp, f: BinaryIO, length: int | None, total: int | None, progress, cancel) -> None:
    done = _size(f)
    received = 0
    while not (cancel is not None and cancel.is_set()):
        try:
            chunk = resp.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"connection lost: {_reason(exc)}") from None
        if not chunk:
            break
        f.write(chunk)
        received += len(chunk)
        if progress is not None:
            progress(done + received, total)
    else:
        raise DownloadCancelled()
    # http.client returns b"" (no error) when the peer closes early, so count the bytes.
    if length is not None and received < length:
        raise _Transient(f"connection dropped after {received} of {length} bytes")


def _http_error(url: str, exc: urllib.error.HTTPError, offset: int, f: BinaryIO) -> int | None:
    if exc.code == 416:
        _, total = _content_range(exc.headers.get("Content-Range"))
        if offset and total == offset:
            return total  # the .part already holds the whole file
        _truncate(f)
        raise _Transient("server refused the byte range of the partial file; starting over")
    if exc.code == 429 or exc.code >= 500:
        # Retry-After in seconds is honoured; an HTTP-date falls back to the backoff.
        raise _Transient(f"HTTP {exc.code} {exc.reason}", _int(exc.headers.get("Retry-After")))
    raise UserError(f"{url}: HTTP {exc.code} {exc.reason}; check the dataset name, "
                    "--shards and --base-url")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    match = _RANGE.match(value or "")
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _verify(part: Path, url: str, total: int | None, expected: int | None, sha: str | None):
    size = part.stat().st_size
    for want, what in ((total, "the server announced"), (expected, "were expected")):
        if want is not None and size != want:
            raise _Corrupt(f"{url}: received {size} bytes but {want} {what}; rerun to fetch "
                           "it afresh, or check --base-url")
    if sha is not None and (got := file_sha256(part)) != sha.lower():
        raise _Corrupt(f"{url}: sha256 is {got}, expected {sha.lower()}; the file is corrupt "
                       "or changed on the server")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- named datasets -------------------------------------------------------------------------
