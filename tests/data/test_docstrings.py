"""Docstrings from Python source text: the snippet parser against full ASTs, real files."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import pytest

from backlm.data.docstrings import MIN_CHARS, docstrings, file_docstrings


def _full_ast_docstrings(text: str) -> list[str]:
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(n) for n in ast.walk(ast.parse(text)) if isinstance(n, nodes))
    return [d for d in docs if d and len(d) >= MIN_CHARS]


@pytest.mark.parametrize(
    "module", ["argparse.py", "json/__init__.py", "textwrap.py", "dataclasses.py", "inspect.py"]
)
def test_snippet_parsing_matches_full_ast(module: str) -> None:
    text = (Path(sysconfig.get_paths()["stdlib"]) / module).read_text(encoding="utf-8")
    assert set(docstrings(text)) == set(_full_ast_docstrings(text))


def test_docstrings_of_fake_module(fake_site: Path) -> None:
    docs = file_docstrings(fake_site / "pkg_a" / "__init__.py")
    starts = [d.split(".")[0] for d in docs]
    assert starts[0] == "Package A module docstring"
    assert set(starts) == {
        "Package A module docstring", "Widget class docstring with a raw \\d escape",
        "Method docstring", "Async method docstring", "Inner function docstring",
    }
    method = next(d for d in docs if d.startswith("Method"))
    assert "\n\nArgs:\n    x: the first" in method  # cleandoc keeps relative indentation


def test_unreadable_files_give_nothing(fake_site: Path) -> None:
    assert file_docstrings(fake_site / "pkg_b" / "binary.py") == []
    assert file_docstrings(fake_site / "missing.py") == []
    assert file_docstrings(fake_site / "pkg_b" / "latin.py")[0].startswith("Café crème")
