"""Commands stay thin: no tensor code, no torchrun environment, no other command's private
names. A command reads options, calls the engine and renders what it returns; what several
commands show lives in ``backlm/commands/render.py``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "backlm"
COMMANDS = PACKAGE / "commands"
TORCHRUN_ENV = {"LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}


def torch_imports(tree: ast.AST) -> list[int]:
    """Lines importing torch (or a part of it), at any level, inside functions too."""
    lines = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        lines += [node.lineno for n in names if n == "torch" or n.startswith("torch.")]
    return lines


def torchrun_reads(tree: ast.AST) -> list[int]:
    """Lines naming a torchrun environment variable (a command never asks whether it runs
    under torchrun: the engine decides)."""
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and n.value in TORCHRUN_ENV]


def private_command_names(tree: ast.AST, module: str) -> list[str]:
    """Underscore names of another command module that ``module`` imports or reads."""
    hits, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backlm.commands"):
            for a in node.names:
                if node.module == "backlm.commands" or node.module == "backlm.commands.data":
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                elif a.name.startswith("_") and node.module != module:
                    hits.append(f"{node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("backlm.commands.") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and aliases[node.value.id] != module):
            hits.append(f"{aliases[node.value.id]}.{node.attr}")
    return hits


def _modules(root: Path) -> dict[str, ast.AST]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def test_the_scans_see_what_they_look_for():
    tree = ast.parse("import os\n"
                     "def f():\n    import torch.nn as nn\n    from torch import cuda\n"
                     "    return 'LOCAL_RANK' in os.environ, os.environ.get('WORLD_SIZE')\n"
                     "from backlm.commands.compare import _render, render\n"
                     "from backlm.commands import train as t\n"
                     "t._money(1)\n")
    assert torch_imports(tree) == [3, 4]
    assert torchrun_reads(tree) == [5, 5]
    assert sorted(private_command_names(tree, "backlm.commands.quickstart")) == [
        "backlm.commands.compare._render", "backlm.commands.train._money"]
    clean = ast.parse("from backlm.commands.render import render_summary\n")
    assert not private_command_names(clean, "backlm.commands.train")


def test_no_command_imports_torch():
    hits = {name: lines for name, tree in _modules(COMMANDS).items()
            if (lines := torch_imports(tree))}
    assert not hits, f"tensor code belongs to the engine: {hits}"


def test_no_command_reads_torchruns_environment():
    hits = {name: lines for name, tree in _modules(COMMANDS).items()
            if (lines := torchrun_reads(tree))}
    assert not hits, f"backlm.train.launch.Processes.plan decides: {hits}"


def test_nothing_imports_another_commands_private_name():
    hits = {name: found for name, tree in _modules(PACKAGE).items()
            if (found := private_command_names(tree, name))}
    assert not hits, f"share it through backlm/commands/render.py: {hits}"


def test_commands_share_only_options_and_renderers():
    """A command imports no other command: what two share is in options or render."""
    shared = {"backlm.commands.options", "backlm.commands.render"}
    hits = {}
    for name, tree in _modules(COMMANDS).items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level:
                targets = ([f"{node.module}.{a.name}" for a in node.names]
                           if node.module in ("backlm.commands", "backlm.commands.data")
                           else [node.module or ""])
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found = [t for t in targets if t.startswith("backlm.commands.") and t not in shared
                     and not (name == "backlm.commands.data" and t.startswith(name + "."))]
            if found:
                hits[name] = found
    assert not hits, hits
