"""Direction names live in backlm/direction.py: no other module spells them as string
literals, and only the edges where names come in (CLI flags, HTTP bodies, files) parse them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "backlm"
HOME = "backlm/direction.py"

# A literal that is a direction name, or one glued to a metric key or model id ("_forward",
# "@backward"); prose ("forward order") is not a name.
NAME = re.compile(r"[_@]?(forward|backward|bidirectional)[_@]?")

# Modules still spelling names, each with why; remove an entry once its module is clean.
PENDING: dict[str, str] = {}

# The edges that turn a name into a Direction (Direction.parse, or Direction(name)).
EDGES = {
    "backlm/commands/": "CLI flags and slash commands",
    "backlm/serve/wire.py": "HTTP request bodies",
    "backlm/config/schema.py": "a config built in Python from a name (YAML: config/load.py)",
    "backlm/experiment/checkpoint.py": "checkpoint meta.json, read through validate_meta",
    "backlm/experiment/loading.py": "a hub folder's safetensors header",
    "backlm/fivecat/runner.py": "the --direction flag carried by FivecatOptions",
    "backlm/report/results.py": "evaluation result files",
    "backlm/report/write.py": "the generation-samples file",
    "backlm/api.py": "the Python API, which takes names as well",
    "backlm/sweep/grid.py": "a sweep's sweep.json record (its grid's directions)",
}


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, nodes) and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def spelled_names(source: str) -> list[tuple[int, str]]:
    """``(line, literal)`` of every string constant that is a direction name (docstrings,
    comments and prose excluded; f-string pieces and dict keys included)."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    return sorted((n.lineno, n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and id(n) not in docs and NAME.fullmatch(n.value))


def parse_calls(source: str) -> list[int]:
    """Lines that parse a name into a Direction: ``Direction.parse(...)`` or
    ``Direction(...)`` (the enum's own lookup), however the class is reached."""
    def is_direction(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "Direction") or (
            isinstance(node, ast.Attribute) and node.attr == "Direction")

    return sorted(n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and (
        is_direction(n.func) or (isinstance(n.func, ast.Attribute) and n.func.attr == "parse"
                                 and is_direction(n.func.value))))


def _modules() -> dict[str, str]:
    root = PACKAGE.parent
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(root).as_posix() != HOME}


SAMPLE = '''"""A module docstring may say forward and backward."""
ORDER = "forward"
KEYS = {"backward": 1, "the bidirectional case": 2}
key = f"val_loss_{'x'}_bidirectional" + f"{name}@forward"
def f(name):
    """So may a function's: bidirectional."""
    return Direction.parse(name), dirn.Direction(name), Direction.FORWARD
'''


def test_the_checks_flag_a_sample():
    assert spelled_names(SAMPLE) == [(2, "forward"), (3, "backward"), (4, "@forward"),
                                     (4, "_bidirectional")]
    assert parse_calls(SAMPLE) == [7, 7]


def test_no_module_but_direction_py_spells_a_direction_name():
    found = {path: hits for path, source in _modules().items()
             if (hits := spelled_names(source)) and path not in PENDING}
    assert not found, "direction names spelled outside backlm/direction.py (use Direction." \
        "FORWARD …, .value for a file, or a helper there): " + "; ".join(
            f"{path}:{line} {text!r}" for path, hits in found.items() for line, text in hits)


def test_pending_modules_still_need_their_entry():
    modules = _modules()
    stale = [p for p in PENDING if p in modules and not spelled_names(modules[p])]
    assert not stale, f"clean now, drop them from PENDING: {', '.join(stale)}"


def test_only_the_edges_parse_direction_names():
    found = {path: lines for path, source in _modules().items()
             if (lines := parse_calls(source)) and not path.startswith(tuple(EDGES))}
    assert not found, "Direction parsed outside the edges (take a Direction instead, or add " \
        "the module to EDGES if names really come in there): " + "; ".join(
            f"{path}:{lines}" for path, lines in found.items())
