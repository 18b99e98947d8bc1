"""Forward/backward pairs: every JSONL example as two records reversed at token level.

Each example (``{"text": ...}`` or chat ``{"messages": [...]}``) is tokenized once in reading
order; :mod:`backlm.direction` then gives the forward and backward model-order sequences, so a
backward record's tokens are exactly its forward twin's tokens reversed (DESIGN.md §1). Every
input line is checked before anything is written, and the output appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm import direction as dirn
from backlm.atomic import atomic_path
from backlm.errors import UserError, jsonl_records
from backlm.paths import DEFAULT_DATASET, dataset_dir
from backlm.tokenizer import TOKENIZER_FILE, Tokenizer, tokenizer_file

_CONTENT_KEYS = ("text", "messages")


@dataclass(frozen=True)
class Example:
    """One input example, validated: reading-order ids, and roles/parts for chat."""

    index: int
    lineno: int
    text: str
    ids: list[int]
    roles: list[int] | None = None
    parts: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        return self.roles is not None


@dataclass
class PairsResult:
    """What :func:`make_pairs` built, checked and (maybe) wrote."""

    tokenizer: Tokenizer
    examples: list[Example]
    records: list[dict[str, Any]]
    validated: bool = False
    failed: list[int] = field(default_factory=list)
    written: Path | None = None

    @property
    def text_examples(self) -> int:
        return sum(not e.is_chat for e in self.examples)

    @property
    def chat_examples(self) -> int:
        return sum(e.is_chat for e in self.examples)

    @property
    def tokens(self) -> int:
        """Tokens over all records (both orders)."""
        return sum(len(r["tokens"]) for r in self.records)


# --- the tokenizer ------------------------------------------------------------------------------


def load_tokenizer(tokenizer: Path | None = None, dataset: str | None = None
                   ) -> tuple[Tokenizer, str]:
    """The tokenizer of ``--tokenizer DIR`` or of a dataset (default ``pydocs``), and the
    sha256 of its file's bytes."""
    if tokenizer is not None and dataset is not None:
        raise UserError("pass either --tokenizer or --dataset, not both")
    if tokenizer is not None:
        path = Path(tokenizer)
        file = (path if path.suffix and not path.is_dir()
                else tokenizer_file(path) or path / TOKENIZER_FILE)
    else:
        from backlm.data.vocab import tokenizer_dir

        name = dataset or DEFAULT_DATASET
        folder = tokenizer_dir(dataset_dir(name))
        file = tokenizer_file(folder) or folder / TOKENIZER_FILE
        if not file.is_file():
            raise UserError(f"dataset {name!r} has no tokenizer ({file} is missing): run "
                            f"`backlm data prepare` (or import the dataset) first, or pass "
                            "--tokenizer DIR")
    tok = Tokenizer.load(file)
    try:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
    return tok, digest


# --- reading ------------------------------------------------------------------------------------


def check_paths(in_path: Path, out_path: Path, source: str) -> None:
    """Refuse what cannot work before any reading: missing input, input as output, an output
    folder that does not exist, an empty source label."""
    if not source.strip():
        raise UserError("--source-label must not be empty: name where the examples come from")
    if not in_path.is_file():
        raise UserError(f"input {in_path} does not exist (or is not a file): pass a .jsonl file")
    if out_path.is_dir():
        raise UserError(f"output {out_path} is a folder: name a .jsonl file to write")
    if not out_path.parent.is_dir():
        raise UserError(f"output folder {out_path.parent} does not exist: create it first")
    same = (out_path.exists() and os.path.samefile(in_path, out_path)) or (
        in_path.resolve() == out_path.resolve())
    if same:
        raise UserError(f"output {out_path} is the input file: choose another output path")


def read_examples(path: Path, tokenizer: Tokenizer) -> list[Example]:
    """Every example of a JSONL file, tokenized in reading order; the first bad line is a
    UserError naming ``path:line``. Blank lines are skipped; an empty file is refused."""
    pending: list[tuple[int, dict[str, Any]]] = []
    for where, value in jsonl_records(path, "each line must be one JSON object"):
        pending.append((int(where.rpartition(":")[2]), _check_record(value, where)))
    if not pending:
        raise UserError(f"{path} has no examples: each line must be a JSON object with a "
                        "'text' string or a 'messages' list")
    texts = [r["text"] for _, r in pending if "text" in r]
    encoded = iter(tokenizer.encode_batch(texts))
    examples = []
    for index, (lineno, record) in enumerate(pending):
        meta = {k: v for k, v in record.items() if k not in _CONTENT_KEYS}
        if "text" in record:
            examples.append(Example(index, lineno, record["text"], next(encoded), meta=meta))
            continue
        try:
            ids, roles, parts = tokenizer.render_conversation(record["messages"])
        except UserError as exc:
            raise UserError(f"{path}:{lineno}: {exc}") from None
        examples.append(Example(index, lineno, tokenizer.decode(ids), ids, roles, parts, meta))
    return examples


def _check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with 'text' or 'messages', got "
                        f"{type(record).__name__}")
    present = [k for k in _CONTENT_KEYS if k in record]
    if len(present) != 1:
        what = "both 'text' and 'messages'" if present else "neither 'text' nor 'messages'"
        keys = ", ".join(list(record)[:8]) or "none"
        raise UserError(f"{where}: has {what} (keys: {keys}); give exactly one")
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str):
            raise UserError(f"{where}: 'text' must be a string, got {type(text).__name__}")
        if not text:
            raise UserError(f"{where}: 'text' is empty; remove the line")
    else:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: 'messages' must be a non-empty list of "
                            "{'role', 'content'} objects")
    return record


# --- building and checking ----------------------------------------------------------------------


def build_records(examples: Sequence[Example], tokenizer: Tokenizer, source: str,
                  tokenizer_sha256: str) -> list[dict[str, Any]]:
    """Two records per example, forward first: model-order tokens without BOS."""
    ids = tokenizer.special_ids
    records = []
    for ex in examples:
        for order in dirn.ORDERS:
            if ex.is_chat:
                seq, mask = dirn.encode_conversation(ex.ids, ex.roles, ex.parts, order, ids)
            else:
                seq, mask = dirn.encode_document(ex.ids, order, ids)
            head = dirn.prefix_length(order)  # BOS only: forward and backward carry no marker
            record: dict[str, Any] = {
                "example": ex.index, "direction": order.value, "source": source,
                "tokens": seq[head:], "text": ex.text, "tokenizer_sha256": tokenizer_sha256,
            }
            if ex.is_chat:
                record["mask"] = mask[head:]
            if ex.meta:
                record["meta"] = ex.meta
            records.append(record)
    return records


def check_pair(ex: Example, forward: dict[str, Any], backward: dict[str, Any],
               tokenizer: Tokenizer) -> bool:
    """Whether one example's records round-trip: both orders back to the reading-order ids,
    backward equal to forward reversed, the text decoded back, masks in their own order."""
    ids = tokenizer.special_ids
    fwd, bwd = forward["tokens"], backward["tokens"]
    fw, bw = dirn.ORDERS
    ok = (dirn.to_reading_order(fwd, fw, ids) == ex.ids
          and dirn.to_reading_order(bwd, bw, ids) == ex.ids
          and dirn.model_order(bwd, bw) == fwd
          and tokenizer.decode(fwd) == ex.text == forward["text"] == backward["text"])
    for record, order in zip((forward, backward), dirn.ORDERS, strict=True):
        ok = ok and record["direction"] == order  # each record names the order it is in
        if ex.is_chat:
            mask = record.get("mask")
            expected = dirn.conversation_mask(ex.roles, ex.parts, order)
            ok = ok and isinstance(mask, list) and len(mask) == len(record["tokens"]) and (
                dirn.model_order(mask, order) == expected)
    return ok


def check_records(examples: Sequence[Example], records: Sequence[dict[str, Any]],
                  tokenizer: Tokenizer) -> list[int]:
    """Indices of the examples whose pair fails :func:`check_pair`."""
    failed = []
    for ex in examples:
        forward, backward = records[2 * ex.index], records[2 * ex.index + 1]
        if not check_pair(ex, forward, backward, tokenizer):
            failed.append(ex.index)
    return failed


def write_records(records: Sequence[dict[str, Any]], out_path: Path) -> None:
    """Write the records as JSONL atomically (temporary file beside, fsync, rename)."""
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# --- the command's one call ---------------------------------------------------------------------


def make_pairs(
    in_path: Path, out_path: Path, source: str, *, tokenizer: Path | None = None,
    dataset: str | None = None, validate: bool = False, preview: int = 0,
) -> PairsResult:
    """Build the forward/backward records of ``in_path`` and write them to ``out_path``.

    Nothing is written with ``preview`` (> 0) or when ``validate`` finds a failing round
    trip (``result.failed``); a bad input line is a UserError and leaves ``out_path`` as it
    was.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if preview < 0:
        raise UserError(f"--preview must be a positive number of pairs, got {preview}")
    check_paths(in_path, out_path, source)
    tok, digest = load_tokenizer(tokenizer, dataset)
    examples = read_examples(in_path, tok)
    result = PairsResult(tok, examples, build_records(examples, tok, source, digest))
    if validate:
        result.validated = True
        result.failed = check_records(examples, result.records, tok)
    if preview or result.failed:
        return result
    write_records(result.records, out_path)
    result.written = out_path
    return result
