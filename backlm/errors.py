"""User-facing errors, and the one text boundary.

Anything a user can cause (bad flag, missing data, corrupt file) raises :class:`UserError`.
The CLI prints its message as one line and exits with code 2, without a traceback.

Every piece of user text (files, standard input, command-line arguments, HTTP request bodies,
terminal chat lines) enters through the functions below, so one rule holds everywhere: text
is valid UTF-8 and holds no lone surrogate. A refusal is one :class:`UserError` line that
names where the text came from (``file:line``, ``argument TEXT``, ``stdin``, a request field).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class UserError(Exception):
    """An error caused by the user's input; reported as one line, exit code 2."""

    exit_code = 2


FILE_FIX = "convert the file to UTF-8"
TEXT_FIX = "pass UTF-8 text"
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, as some editors write


def text_from_bytes(data: bytes, where: str, fix: str = TEXT_FIX) -> str:
    """``data`` decoded as UTF-8 (a leading byte order mark dropped); bytes that are not UTF-8
    raise :class:`UserError` naming ``where``, the first bad byte and its position."""
    start = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        position = start + exc.start
        raise UserError(f"{where}: not valid UTF-8 (byte 0x{data[position]:02x} at position "
                        f"{position}): {fix}") from None


def check_text(text: str, where: str, fix: str = TEXT_FIX, *, field: str | None = None,
               os_bytes: bool = False) -> str:
    """``text`` itself, refused (:class:`UserError` naming ``where`` and ``field``) when it holds
    a lone surrogate: such a string is not Unicode text, cannot be written as UTF-8, and JSON
    spells one as ``"\\ud800"``. With ``os_bytes`` the text came from the operating system
    (arguments, environment), where Python turns each byte that is not UTF-8 into a surrogate
    U+DC80..U+DCFF: those are reported as the byte they stand for."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as exc:
        at = exc.start
    char = text[at]
    if os_bytes and 0xDC80 <= ord(char) <= 0xDCFF:
        position = len(text[:at].encode("utf-8", "surrogateescape"))
        raise UserError(f"{where}: not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at "
                        f"position {position}): {fix}")
    inside = f" in {field!r}" if field else ""
    raise UserError(f"{where}: lone surrogate \\u{ord(char):04x} at character {at}"
                    f"{inside}: {fix}")


def check_argument(value: str | None, name: str) -> str | None:
    """A command-line argument or option value (``name``: ``TEXT``, ``--prompt``) checked as
    text; None passes through."""
    if value is None:
        return None
    return check_text(value, f"argument {name}", os_bytes=True)


def check_strings(value: Any, where: str, fix: str = TEXT_FIX, path: str = "") -> Any:
    """Every string (keys included) of a decoded JSON value checked with :func:`check_text`;
    a refusal names the field's path (``messages[0].content``)."""
    if isinstance(value, str):
        check_text(value, where, fix, field=path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key), where, fix, field=f"{path} key" if path else "a key")
            check_strings(item, where, fix, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_strings(item, where, fix, f"{path}[{i}]")
    return value


def json_from_bytes(data: bytes, where: str, fix: str = TEXT_FIX, shape: str = "") -> Any:
    """One JSON value from ``data``: UTF-8 (:func:`text_from_bytes`), valid JSON (NaN and
    Infinity refused), every string checked (:func:`check_strings`). ``shape`` says what the
    JSON should look like, for the invalid-JSON message."""
    text = text_from_bytes(data, where, fix)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError) as exc:
        msg = getattr(exc, "msg", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{where}: not valid JSON ({msg})" + (f"; {shape}" if shape else "")
                        ) from None
    return check_strings(value, where, fix)


def jsonl_records(path: Path, shape: str = "") -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of a JSONL file, ``where`` being
    ``file:line``; each line goes through :func:`json_from_bytes`. A file that cannot be read
    is a :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            yield where, json_from_bytes(raw, where, FILE_FIX, shape)
