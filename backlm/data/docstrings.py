"""Docstrings from Python source text, without importing or fully parsing it.

Parsing every file whole costs minutes on two cores (torch alone is ~60 MB of source), so a
regular expression finds the strings that open a ``def``/``class`` body and only the short
snippet from the header to the end of that string goes through :func:`ast.parse`. On the
standard library this yields the same docstrings as walking each module's full tree.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

MIN_CHARS = 64  # shorter docstrings are mostly one-line labels ("Return self.")
_HEADER_LOOKBACK = 80  # lines between a def/class keyword and its body (long signatures)
_BLANK_LINES = r"(?:[ \t]*(?:#[^\n]*)?\n)*"
# A line ending in ':' then (after blank/comment lines) an indented string: a candidate body
# docstring. Group 1 is the body indentation, group 2 the quote.
_BODY_STRING = re.compile(
    r":[ \t]*(?:#[^\n]*)?\n" + _BLANK_LINES + r"([ \t]+)[rRuU]?(\"\"\"|'''|\"|')"
)
_MODULE_STRING = re.compile(r"\A" + _BLANK_LINES + r"[rRuU]?(\"\"\"|'''|\"|')")
_STRING_REST = {
    '"""': re.compile(r'[^"\\]*(?:(?:\\[\s\S]|"(?!""))[^"\\]*)*"""'),
    "'''": re.compile(r"[^'\\]*(?:(?:\\[\s\S]|'(?!''))[^'\\]*)*'''"),
    '"': re.compile(r'[^"\\\n]*(?:\\[\s\S][^"\\\n]*)*"'),
    "'": re.compile(r"[^'\\\n]*(?:\\[\s\S][^'\\\n]*)*'"),
}
_HEADER = re.compile(r"([ \t]*)(?:async[ \t]+def|def|class)[ \t]+\w")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


@dataclass(frozen=True)
class Documented:
    """One docstring and what it documents.

    ``node`` is the parsed ``def``/``class`` (its body cut after the docstring; enough for the
    name, arguments and bases) or None for the module docstring; ``start`` is the offset of its
    header line in the newline-normalised text and ``indent`` that line's indentation.
    """

    doc: str
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | None = None
    start: int = 0
    indent: str = ""


def normalise_newlines(text: str) -> str:
    """``text`` with ``\\r\\n`` and ``\\r`` line ends turned into ``\\n`` (offsets refer to this)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def docstrings(text: str, min_chars: int = MIN_CHARS) -> list[str]:
    """Cleaned docstrings (module, class, function) of Python source ``text``, in order.

    Only docstrings of at least ``min_chars`` characters after :func:`inspect.cleandoc` are
    kept. Each is confirmed by parsing the snippet from its ``def``/``class`` line to its end;
    a candidate whose snippet does not parse is skipped.
    """
    return [d.doc for d in documented(text, min_chars)]


def documented(text: str, min_chars: int = MIN_CHARS) -> list[Documented]:
    """Like :func:`docstrings`, with the ``def``/``class`` node behind each docstring."""
    text = normalise_newlines(text)
    found: list[Documented] = []
    head = _MODULE_STRING.match(text)
    if head:
        end = _string_end(text, head.group(1), head.end())
        if end - head.end() >= min_chars:
            got = _snippet_docstring(text[:end], module=True)
            if got is not None and len(got[0]) >= min_chars:
                found.append(Documented(got[0]))
    for m in _BODY_STRING.finditer(text):
        end = _string_end(text, m.group(2), m.end())
        # A literal is never shorter than its cleaned value: skip short ones before parsing.
        if end - m.end() < min_chars:
            continue
        start, indent = _header_before(text, m.start())
        if start < 0 or len(indent.expandtabs()) >= len(m.group(1).expandtabs()):
            continue
        snippet = text[start:end]
        # An indented def cannot start a module; an `if 1:` block lets it parse as written.
        got = _snippet_docstring("if 1:\n" + snippet if indent else snippet, nested=bool(indent))
        if got is not None and len(got[0]) >= min_chars:
            found.append(Documented(got[0], got[1], start, indent))
    # An escape like "\ud800" in a docstring gives a lone surrogate, which is not UTF-8.
    return [d for d in found if not _SURROGATE.search(d.doc)]


def _string_end(text: str, quote: str, pos: int) -> int:
    m = _STRING_REST[quote].match(text, pos)
    return m.end() if m else -1


def _header_before(text: str, pos: int) -> tuple[int, str]:
    """Start and indentation of the nearest def/class line at or above ``pos`` (-1 if none)."""
    start = text.rfind("\n", 0, pos) + 1
    for _ in range(_HEADER_LOOKBACK):
        m = _HEADER.match(text, start)
        if m:
            return start, m.group(1)
        if start == 0:
            break
        start = text.rfind("\n", 0, start - 1) + 1
    return -1, ""


def _snippet_docstring(snippet: str, module: bool = False, nested: bool = False):
    try:
        tree = ast.parse(snippet)
    except PARSE_ERRORS:
        return None
    node: ast.AST = tree
    if not module:
        body = getattr(tree.body[0], "body", []) if nested else tree.body
        node = body[0] if body else tree
        if not isinstance(node, _DEFS):
            return None
    # Exactly one statement: the string really opens this body (not a later block's string).
    if len(getattr(node, "body", ())) != 1:
        return None
    doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
    return None if doc is None else (doc, None if module else node)


def file_docstrings(path: str | Path) -> list[str]:
    """Docstrings of one ``.py`` file, honouring its coding cookie; unreadable files give []."""
    try:
        data = Path(path).read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return docstrings(data.decode(encoding))
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
        return []
