"""The embedded default chat set: questions about the local Python's code, answered offline.

Every public function, method, class and module with a docstring in the standard library and
the installed packages (found as :mod:`backlm.data.corpus` finds them, read with
:mod:`backlm.data.docstrings`, nothing imported) becomes a question with varied phrasing:
what it does (the docstring's first paragraph), how to call it (the signature rendered from
the ``ast``), what a class derives from, and some multi-turn conversations that ask both.
Arithmetic problems of :mod:`backlm.data.arith` make up about a fifth, so supervised fine-tuning
teaches the answer format that RL's reward reads.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import io
import json
import random
import re
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path

from backlm.callbacks import Progress
from backlm.data import corpus
from backlm.data.docstrings import documented, normalise_newlines

Messages = list[dict[str, str]]

MAX_CONVERSATIONS = 20_000  # keeps the default build well under a minute on two cores
ARITH_SHARE = 0.2
ARITH_SEED = 20240601
ANSWER_CHARS = 600
MIN_ANSWER_CHARS = 24
_HEADERS = re.compile(r"^([ \t]*)(class|(?:async[ \t]+)?def)[ \t]+(\w+)", re.M)
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$", re.S)
_SENTENCE_END = re.compile(r"[.!?](?=\s)")

WHAT_FUNCTION = (
    "What does the function `{q}` do?", "What does `{q}` do?", "Explain what `{q}` does.",
    "Can you tell me what `{q}` is for?", "In Python, what is `{q}` used for?",
    "I found a call to `{q}` in some code. What does it do?",
)
WHAT_METHOD = (
    "What does the method `{q}` do?", "What does `{q}` do?", "Explain the method `{q}`.",
    "What is `{q}` for?",
)
WHAT_CLASS = (
    "What is the class `{q}` for?", "What does the class `{q}` represent?",
    "Explain the `{q}` class.", "What is `{q}`?",
)
WHAT_MODULE = (
    "What is the module `{q}` for?", "What does the `{q}` module provide?",
    "Explain the Python module `{q}`.", "What can I do with `{q}`?",
)
ASK_ARGS = (
    "What arguments does `{q}` take?", "What is the signature of `{q}`?",
    "How do I call `{q}`?", "Which parameters does `{q}` accept?",
)
FOLLOW_ARGS = ("What are its arguments?", "And how do I call it?", "What parameters does it take?")
ASK_BASES = ("What does the class `{q}` inherit from?", "What are the base classes of `{q}`?")
FOLLOW_BASES = ("What does it inherit from?", "Which classes does it derive from?")


# --- source → entries (runs in worker processes: plain tuples cross the pipe) ----------------


def module_name(path: Path, root: Path) -> str | None:
    """Dotted module name of ``path`` under ``root``; None for private or non-importable paths."""
    try:
        parts = list(path.relative_to(root).with_suffix("").parts)
    except ValueError:
        return None
    if parts and parts[-1] == "__init__":
        parts.pop()
    if not parts or any(not p.isidentifier() or p.startswith("_") for p in parts):
        return None
    return ".".join(parts)


def file_entries(job: tuple[str, str]) -> list[tuple[str, str, str, str]]:
    """``(kind, qualified name, call or bases, docstring)`` of each public documented item of
    one source file; ``kind`` is module, function, method or class. Unreadable files give []."""
    path, module = job
    try:
        data = Path(path).read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = normalise_newlines(data.decode(encoding))
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
        return []
    headers = [(m.start(), len(m.group(1).expandtabs()), m.group(2), m.group(3))
               for m in _HEADERS.finditer(text)]
    starts = [h[0] for h in headers]
    out = []
    for item in documented(text):
        node = item.node
        if node is None:
            out.append(("module", module, "", item.doc))
            continue
        if node.name.startswith("_"):
            continue
        owner = _owner(headers, starts, item.start, len(item.indent.expandtabs()))
        if owner == "":
            kind, qual = ("class" if isinstance(node, ast.ClassDef) else "function"), node.name
        elif owner is not None and not isinstance(node, ast.ClassDef):
            kind, qual = "method", f"{owner}.{node.name}"
        else:
            continue  # nested functions and classes: no stable public name
        extra = (_bases(node) if isinstance(node, ast.ClassDef)
                 else render_signature(node, drop_self=kind == "method"))
        out.append((kind, f"{module}.{qual}", extra, item.doc))
    return out


def _owner(headers, starts, start: int, indent: int) -> str | None:
    """"" for a top-level item, the class name for a method of a top-level public class, else
    None."""
    if indent == 0:
        return ""
    i = bisect.bisect_left(starts, start) - 1
    while i >= 0:
        _, level, kind, name = headers[i]
        if level < indent:
            if level == 0 and kind == "class" and not name.startswith("_"):
                return name
            return None
        i -= 1
    return None


def render_signature(node: ast.FunctionDef | ast.AsyncFunctionDef, drop_self: bool = False) -> str:
    """``name(a, b=1, *args, **kw)``: the parameters without annotations, long defaults as
    ``...``, a method's ``self``/``cls`` left out."""
    args = node.args
    for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
        if a is not None:
            a.annotation = None
    positional = [*args.posonlyargs, *args.args]
    if drop_self and positional and positional[0].arg in ("self", "cls"):
        if len(args.defaults) == len(positional):
            args.defaults = args.defaults[1:]
        if args.posonlyargs:
            args.posonlyargs = args.posonlyargs[1:]
        else:
            args.args = args.args[1:]
    args.defaults = [_short_default(d) for d in args.defaults]
    args.kw_defaults = [None if d is None else _short_default(d) for d in args.kw_defaults]
    return f"{node.name}({ast.unparse(args)})"


def _short_default(node: ast.expr) -> ast.expr:
    return ast.Constant(Ellipsis) if len(ast.unparse(node)) > 30 else node


def _bases(node: ast.ClassDef) -> str:
    names = [ast.unparse(b) for b in node.bases]
    return ", ".join(n for n in names if n != "object" and len(n) <= 60)


# --- entries → conversations --------------------------------------------------------------


def first_paragraph(doc: str) -> str:
    """The docstring's first paragraph of prose, lines joined, at most ~600 characters cut at
    a sentence end; "" when there is none worth answering with."""
    for para in doc.split("\n\n"):
        para = " ".join(line.strip() for line in para.split(">>>")[0].splitlines()).strip()
        if _SIGNATURE_LINE.match(para) or len(para) < MIN_ANSWER_CHARS:
            continue
        return shorten(para)
    return ""


def shorten(text: str, cap: int = ANSWER_CHARS) -> str:
    """``text`` cut at its last sentence end before ``cap`` (at a word, with "…", if none)."""
    if len(text) <= cap:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, cap)]
    if ends and ends[-1] >= MIN_ANSWER_CHARS:
        return text[: ends[-1]]
    return text[:cap].rsplit(" ", 1)[0] + "…"


def describe_call(call: str) -> str:
    """A sentence about a rendered signature: which parameters are required or optional."""
    try:
        args = ast.parse(f"def {call}: pass").body[0].args  # type: ignore[attr-defined]
    except SyntaxError:
        return ""
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    required = [a.arg for a in positional[:first_default]]
    keyword = list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    required += [a.arg for a, d in keyword if d is None]
    optional = list(zip((a.arg for a in positional[first_default:]), args.defaults, strict=True))
    optional += [(a.arg, d) for a, d in keyword if d is not None]
    parts = []
    if required:
        parts.append(f"{_names(required)} {'is' if len(required) == 1 else 'are'} required")
    if optional:
        shown = ", ".join(f"`{n}` (default `{ast.unparse(d)}`)" for n, d in optional[:4])
        parts.append(f"optional: {shown}" + (", and more" if len(optional) > 4 else ""))
    if args.vararg:
        parts.append(f"`*{args.vararg.arg}` takes any further positional arguments")
    if args.kwarg:
        parts.append(f"`**{args.kwarg.arg}` takes any further keyword arguments")
    if args.kwonlyargs:
        parts.append(f"{_names([a.arg for a in args.kwonlyargs])} must be passed by keyword")
    if not parts:
        return "It takes no arguments."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _names(names: Sequence[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def entry_conversations(entry: tuple[str, str, str, str]) -> list[Messages]:
    """The conversations one documented item gives (none when its docstring says too little).

    Phrasings and the choice between single and multi-turn come from a generator seeded by
    the item's name, so a rebuild gives the same set.
    """
    kind, qual, extra, doc = entry
    answer = first_paragraph(doc)
    if not answer:
        return []
    rng = random.Random(hashlib.sha256(qual.encode()).digest())
    what = {"function": WHAT_FUNCTION, "method": WHAT_METHOD, "class": WHAT_CLASS,
            "module": WHAT_MODULE}[kind]
    ask = rng.choice(what).format(q=qual)
    if kind in ("module",) or (kind == "class" and not extra):
        return [_turns(ask, answer)]
    if kind == "class":
        bases = f"`{qual.rsplit('.', 1)[-1]}` derives from {_names(extra.split(', '))}."
        if rng.random() < 0.3:
            return [_turns(ask, answer, rng.choice(FOLLOW_BASES), bases)]
        return [_turns(ask, answer), _turns(rng.choice(ASK_BASES).format(q=qual), bases)]
    call = f"The call is `{extra}`. {describe_call(extra)}".strip()
    if rng.random() < 0.3:
        return [_turns(ask, answer, rng.choice(FOLLOW_ARGS), call)]
    return [_turns(ask, answer), _turns(rng.choice(ASK_ARGS).format(q=qual), call)]


def _turns(*texts: str) -> Messages:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]


def arithmetic_conversations(n: int, seed: int = ARITH_SEED) -> list[Messages]:
    """``n`` distinct arithmetic conversations (fewer only if the templates run out)."""
    from backlm.data.arith import problems

    seen: dict[str, Messages] = {}
    for p in problems(n * 4, seed):
        seen.setdefault(p.question, p.messages())
        if len(seen) == n:
            break
    return list(seen.values())


# --- the whole set ----------------------------------------------------------------------------


def _jobs(roots: Sequence[Path]) -> list[tuple[str, str]]:
    jobs, seen = [], set()
    for root in roots:
        for path in corpus.source_files([root]):
            name = module_name(path, root)
            if name is not None and str(path.resolve()) not in seen:
                seen.add(str(path.resolve()))
                jobs.append((str(path), name))
    return jobs


def _entries(jobs: list[tuple[str, str]], workers: int) -> Iterator[list[tuple]]:
    if workers <= 1 or len(jobs) < 64:
        yield from map(file_entries, jobs)
        return
    import multiprocessing

    with multiprocessing.Pool(workers) as pool:
        # imap keeps file order, so the set does not depend on the number of workers; leaving
        # the block early (enough conversations) terminates the pool.
        yield from pool.imap(file_entries, jobs, chunksize=16)


def build_default_chat(
    roots: list[Path] | None = None, max_docs: int | None = None, workers: int = 2,
    progress: Progress | None = None, limit: int = MAX_CONVERSATIONS,
) -> list[Messages]:
    """The default chat set: conversations about the documented items under ``roots``
    (default: the local installation) and ~20% arithmetic, deduplicated, in a fixed shuffled
    order. ``max_docs`` caps the documented items used, ``limit`` the conversations."""
    report = progress or (lambda stage, done, total: None)
    report("scan", 0, 0)
    jobs = _jobs(roots if roots is not None else corpus.default_roots())
    want = int(limit * (1 - ARITH_SHARE))
    chats: dict[str, Messages] = {}
    seen_docs: set[str] = set()
    used = 0
    for i, entries in enumerate(_entries(jobs, workers), 1):
        for entry in entries:
            if entry[3] in seen_docs or (max_docs is not None and used >= max_docs):
                continue
            seen_docs.add(entry[3])
            found = entry_conversations(entry)
            used += bool(found)
            for chat in found:
                chats.setdefault(json.dumps(chat, sort_keys=True), chat)
        if i % 256 == 0 or i == len(jobs):
            report("extract", i, len(jobs))
        if len(chats) >= want or (max_docs is not None and used >= max_docs):
            break
    keys = list(chats)[:want]
    docs = [chats[k] for k in keys]
    n_arith = round(len(docs) * ARITH_SHARE / (1 - ARITH_SHARE))
    taken = set(keys)
    arith = [c for c in arithmetic_conversations(n_arith)
             if json.dumps(c, sort_keys=True) not in taken]
    # A fixed shuffle (by a slice of each conversation's hash) mixes packages and arithmetic.
    return sorted(docs + arith, key=lambda c: hashlib.sha256(
        json.dumps(c, sort_keys=True).encode()).digest()[8:])
