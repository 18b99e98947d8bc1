"""The package's shape, held to docs/ARCHITECTURE.md: folders with public faces, the import
rules between them, no import cycles, the experiment folder's file names in one module,
modules of a readable size."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "backlm"
# Every file name of the experiment folder (DESIGN.md §2): only backlm/experiment/folder.py spells them.
LAYOUT_NAMES = ("best.json", "best_5cat.json", "training_summary.json", "evaluations",
                "metadata.json", "config.yaml", "parent_link.json", "metrics.jsonl", "run.lock",
                "generation_samples.jsonl", "notes.txt", "issues.txt", "RESEARCH_REPORT.md",
                "hub_upload", "uploads.json")
MAX_LINES = 400
MAX_TOP_LEVEL = 15
DOC = PACKAGE.parent / "docs" / "ARCHITECTURE.md"


def modules() -> dict[str, Path]:
    """Dotted module name → source file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(level: str) -> dict[str, set[str]]:
    """Edges between modules (``level="module"``) or between the package's top-level parts
    (``"part"``: ``backlm.data``, ``backlm.train.loop`` …), from every import statement, the
    ones inside functions included: a lazy import still ties two modules together."""
    mods = modules()

    def node(name: str) -> str:
        return name if level == "module" else ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for stmt in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                subs = [f"{stmt.module}.{a.name}" for a in stmt.names]
                # ``from backlm.experiment import folder`` ties to the module, not the face
                targets = subs if all(s in mods for s in subs) else [stmt.module, *subs]
            for target in targets:
                if target in mods and node(target) != node(name):
                    graph[node(name)].add(node(target))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_find_cycle_finds_one_and_only_then():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("level", ["module", "part"])
def test_the_package_has_no_import_cycle(level):
    graph = import_graph(level)
    assert graph["backlm.train.loop" if level == "module" else "backlm.train"]  # the graph is real
    cycle = find_cycle(graph)
    assert cycle is None, " → ".join(cycle)


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant except docstrings (f-string pieces included), with its line."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def layout_spellings(path: Path) -> list[str]:
    """Where ``path`` spells a file name of the experiment folder (or a ``.h5`` path)."""
    hits = []
    for line, text in _strings(ast.parse(path.read_text(encoding="utf-8"))):
        for name in LAYOUT_NAMES:
            # a file name anywhere; a folder name as a path component (prose such as "the
            # last 3 evaluations" is fine)
            pattern = re.escape(name) if "." in name else rf"(^|/){re.escape(name)}($|/)"
            if re.search(pattern, text):
                hits.append(f"{path.name}:{line} {name!r}")
        if text.endswith(".h5") or text.startswith(".h5"):
            hits.append(f"{path.name}:{line} {text!r}")
    return hits


def test_the_scan_sees_spelled_names(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docstrings may name best.json."""\n'
                      'a = exp / "best.json"\nb = f"{phase}.h5"\nc = "evaluations"\n'
                      'd = "x/notes/issues.txt"\ne = "the last 3 evaluations"\n')
    assert sorted(h.split()[1] for h in layout_spellings(sample)) == [
        "'.h5'", "'best.json'", "'evaluations'", "'issues.txt'"]


def test_only_experiment_py_spells_the_folder_layout():
    hits = [hit for name, path in modules().items() if name != "backlm.experiment.folder"
            for hit in layout_spellings(path)]
    assert not hits, "use backlm.experiment.folder.Experiment instead: " + ", ".join(hits)


def test_modules_stay_readable():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_commands_stay_thin():
    """Command modules import no tensor code at the top (``--help`` stays fast) and never
    build paths inside an experiment folder themselves."""
    for name, path in modules().items():
        if not name.startswith("backlm.commands."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        imported = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"torch", "h5py", "wandb", "numpy"}, name


def test_architecture_doc_names_every_module_and_only_those():
    doc = DOC.read_text(encoding="utf-8")
    missing = [str(path.relative_to(PACKAGE.parent)) for path in modules().values()
               if f"`{path.relative_to(PACKAGE.parent)}`" not in doc]
    assert not missing, f"add a line for each to docs/ARCHITECTURE.md: {missing}"
    listed = re.findall(r"^\| `(backlm/[^`*]+)` \|", doc, re.M)
    gone = [p for p in listed if not (PACKAGE.parent / p).exists()]
    assert not gone, f"docs/ARCHITECTURE.md lists modules that do not exist: {gone}"
    assert len(listed) == len(set(listed)), "a module is listed twice"


def test_the_top_level_keeps_the_core_only():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules at the top level: {top}"


FOLDERS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
                 and p.name not in ("configs",))


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_folder_has_a_public_face(folder):
    """``__init__`` with ``__all__`` (names that exist) and a first docstring line that says
    what the folder must not know."""
    import importlib

    tree = ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree) or ""
    first = doc.splitlines()[0] if doc else ""
    assert re.search(r"\bknows? no\b", first), f"{folder}: first docstring line {first!r}"
    names = [n for n in tree.body if isinstance(n, ast.Assign | ast.AnnAssign)
             and getattr(n.targets[0] if isinstance(n, ast.Assign) else n.target, "id", "")
             == "__all__"]
    assert names, f"backlm/{folder}/__init__.py has no __all__"
    module = importlib.import_module(f"backlm.{folder}")
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"backlm.{folder}.{name}"


def import_rules() -> dict[str, set[str]]:
    """docs/ARCHITECTURE.md's "Import rules" table: part → the parts it never imports."""
    text = DOC.read_text(encoding="utf-8").split("## Import rules", 1)[1].split("\n## ", 1)[0]
    rules = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("part", "---"):
            rules[cells[0].strip("`")] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return rules


def _part(module: str) -> str:
    """``backlm.train.loop`` → ``train``; a top-level module → ``core`` unless it wires the
    folders together (cli, quickstart, api: their own names)."""
    parts = module.split(".")
    if len(parts) > 2 or (PACKAGE / parts[1] / "__init__.py").exists():
        return parts[1]
    return parts[1] if parts[1] in ("cli", "quickstart", "api", "__init__") else "core"


def broken_rules(graph: dict[str, set[str]], rules: dict[str, set[str]]) -> list[str]:
    """Every edge ``a → b`` of the part graph where ``a``'s rule names ``b`` (a core module
    by its own name)."""
    out = []
    for src, targets in graph.items():
        if src == "backlm":
            continue
        rule = rules.get(_part(src), set())
        for dst in targets:
            if dst == "backlm":
                continue
            if dst.split(".")[1] in rule or (_part(dst) == "core" and "core" in rule):
                out.append(f"{src} → {dst}")
    return sorted(out)


def test_the_import_rules_hold():
    rules = import_rules()
    assert {"core", "model", "experiment", "train", "serve", "data", "hub", "report"} <= set(rules)
    broken = broken_rules(import_graph("part"), rules)
    assert not broken, "imports the architecture forbids: " + ", ".join(broken)


def test_the_rule_check_sees_a_forbidden_import():
    graph = {"backlm.model": {"backlm.direction"}, "backlm.train": {"backlm.serve"},
             "backlm.serve": {"backlm.experiment"}}
    rules = {"model": {"direction"}, "train": {"serve"}, "serve": {"train"}}
    assert broken_rules(graph, rules) == ["backlm.model → backlm.direction",
                                          "backlm.train → backlm.serve"]
