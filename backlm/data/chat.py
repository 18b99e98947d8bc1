"""Conversation (chat) datasets for the mid-training, SFT and RL phases.

A chat dataset is a folder ``$BACKLM_HOME/data/<name>/`` of parquet shards
``train_00000.parquet``, ``val_00000.parquet``, ... with a ``messages`` column of type
``list<struct<role: string, content: string>>`` (the layout of HuggingFace chat sets such as
``HuggingFaceTB/smoltalk``); a ``messages`` column holding one JSON string per row is read
too. Datasets come from three places: the embedded offline default built from the local
Python installation (:mod:`backlm.data.pydocs_chat`), the user's messages JSONL files, and
SmolTalk downloaded from the Hub. Every dataset is built in a hidden sibling folder and renamed
into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from backlm.atomic import atomic_path
from backlm.callbacks import Progress
from backlm.data.corpus import _remove_stale_partials, _swap_into_place, check_rebuildable
from backlm.data.pydocs_chat import build_default_chat
from backlm.data.shards import require_kind
from backlm.errors import FILE_FIX, UserError, check_text, jsonl_records
from backlm.paths import check_writable

__all__ = [
    "CHAT_DATASET", "ChatSummary", "build_default_chat", "chat_shards", "check_conversation",
    "import_chat", "prepare_chat", "read_conversations", "read_messages_jsonl",
    "split_conversations", "write_chat_shard",
]

CHAT_DATASET = "pydocs-chat"
ROLES = ("system", "user", "assistant")
SHARD_CONVERSATIONS = 50_000
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
JSONL_SHAPE = ('each line must be one JSON object like {"messages": [{"role": "user", '
               '"content": "..."}, {"role": "assistant", "content": "..."}]}')
_FETCH_HINT = ("run `backlm data prepare --chat`, or `backlm data import --chat FILE... "
               "--dataset NAME`, or `backlm data download --task smoltalk`")

Messages = list[dict[str, str]]

# --- reading ----------------------------------------------------------------------------------


def read_conversations(path: Path) -> list[Messages]:
    """Every conversation of one chat shard, as lists of ``{"role", "content"}`` dicts.

    A file that is missing, not parquet, or without a ``messages`` column raises
    :class:`UserError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such chat shard: {path}; {_FETCH_HINT}")
    try:
        shard = pq.ParquetFile(path)
        names = shard.schema_arrow.names
        if "messages" not in names:
            raise UserError(f"{path} has no `messages` column (columns: {', '.join(names)}); "
                            "a chat shard needs messages: a list of {role, content} per row")
        column = shard.read(columns=["messages"]).column("messages")
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {path} as a parquet chat shard ({reason}); "
                        "check the file or re-create the dataset") from None
    rows = column.to_pylist()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        rows = [_json_row(path, i, r) for i, r in enumerate(rows, 1)]
    return [_plain(path, i, r) for i, r in enumerate(rows, 1)]


def _json_row(path: Path, index: int, value: str | None):
    try:
        return json.loads(value or "")
    except ValueError:
        raise UserError(f"{path} row {index}: `messages` is not valid JSON; "
                        "store a JSON list of {role, content} objects per row") from None


def _plain(path: Path, index: int, row) -> Messages:
    if not isinstance(row, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in row
    ):
        raise UserError(f"{path} row {index}: `messages` must be a list of "
                        "{role, content} objects with string values")
    return [{"role": m["role"], "content": m["content"]} for m in row]


def chat_shards(folder: Path, split: str) -> list[Path]:
    """Sorted ``{split}_*.parquet`` shards of a chat dataset; none raises :class:`UserError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no chat dataset at {folder}; {_FETCH_HINT}")
    shards = sorted(folder.glob(f"{split}_*.parquet"))
    if not shards:
        raise UserError(f"chat dataset {folder} has no {split} shards; {_FETCH_HINT}")
    return shards


# --- validation -------------------------------------------------------------------------------


def check_conversation(messages, where: str) -> Messages:
    """Validate one conversation and return it normalised (only ``role``/``content`` keys).

    Roles are user, assistant and system; a system message may only come first and is merged
    into the first user turn (``"SYSTEM\\n\\nUSER"``). The turns then alternate user,
    assistant, user, ... starting with user, and no content is blank. Problems raise
    ``UserError(f"{where}: ...")``.
    """
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: `messages` must be a non-empty list of "
                        "{\"role\", \"content\"} objects")
    turns: Messages = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{where}: message {i} must be an object with \"role\" and "
                            "\"content\" keys")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise UserError(f"{where}: message {i} has role {role!r}; use user, assistant "
                            "or system")
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i} content must be a string, "
                            f"not {type(content).__name__}")
        if not content.strip():
            raise UserError(f"{where}: message {i} ({role}) has empty content")
        check_text(content, where, FILE_FIX, field=f"message {i} content")
        turns.append({"role": role, "content": content})
    if turns[0]["role"] == "system":
        system = turns.pop(0)
        if not turns or turns[0]["role"] != "user":
            raise UserError(f"{where}: a system message must be followed by a user message")
        turns[0] = {"role": "user", "content": f"{system['content']}\n\n{turns[0]['content']}"}
    for i, turn in enumerate(turns):
        want = ("user", "assistant")[i % 2]
        if turn["role"] != want:
            extra = "; a system message may only come first" if turn["role"] == "system" else ""
            raise UserError(f"{where}: turn {i + 1} is {turn['role']} but should be {want} "
                            f"(turns alternate user, assistant, ... starting with user){extra}")
    return turns


def read_messages_jsonl(path: Path) -> list[Messages]:
    """Every conversation of a messages JSONL file (one ``{"messages": [...]}`` per line, blank
    lines skipped), read through the text boundary (:func:`backlm.errors.jsonl_records`) and
    validated with :func:`check_conversation`. The first bad line raises :class:`UserError`
    naming ``file:line`` and the fix."""
    conversations = []
    for where, record in jsonl_records(path, JSONL_SHAPE):
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}; "
                            f"{JSONL_SHAPE}")
        if "messages" not in record:
            keys = ", ".join(map(str, record)) or "none"
            raise UserError(f"{where}: no \"messages\" key (keys: {keys}); {JSONL_SHAPE}")
        conversations.append(check_conversation(record["messages"], where))
    return conversations


# --- writing ----------------------------------------------------------------------------------


def write_chat_shard(path: Path, conversations: Sequence[Messages]) -> None:
    """Atomically write ``conversations`` as one parquet shard with a ``messages`` column."""
    table = pa.table({"messages": pa.array(list(conversations), type=MESSAGES_TYPE)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=1024, compression="zstd")


def conversation_key(messages: Messages) -> bytes:
    """sha256 of a conversation's canonical JSON: the split and the shuffle are read from it."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def split_conversations(
    conversations: Sequence[Messages], val_fraction: float = 0.02
) -> tuple[list[Messages], list[Messages]]:
    """Deterministic (train, val) split by each conversation's hash; val gets at least one
    conversation when there are two or more. The input order is kept within each split."""
    keyed = [(conversation_key(c), c) for c in conversations]
    cut = int(val_fraction * 2**64)
    val_idx = {i for i, (k, _) in enumerate(keyed) if int.from_bytes(k[:8], "big") < cut}
    if not val_idx and len(keyed) >= 2:
        val_idx = {min(range(len(keyed)), key=lambda i: keyed[i][0])}
    train = [c for i, (_, c) in enumerate(keyed) if i not in val_idx]
    return train, [c for i, (_, c) in enumerate(keyed) if i in val_idx]


@dataclass
class ChatSummary:
    """What a chat dataset holds (or held already, with ``existed``)."""

    path: Path
    train: int = 0  # conversations
    val: int = 0
    existed: bool = False
    seconds: float = 0.0
    shards: int = 0
    files: int = 0  # input files (import) or documented items' source files (prepare)
    notes: list[str] = field(default_factory=list)


def _write_dataset(folder: Path, train: list[Messages], val: list[Messages],
                   summary: ChatSummary) -> None:
    """Write the splits in a hidden sibling folder, then rename it into place."""
    tmp = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for split, chats in (("train", train), ("val", val)):
            for n, lo in enumerate(range(0, max(len(chats), 1), SHARD_CONVERSATIONS)):
                write_chat_shard(tmp / f"{split}_{n:05d}.parquet",
                                 chats[lo : lo + SHARD_CONVERSATIONS])
                summary.shards += 1
        _swap_into_place(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the chat dataset {folder}: {exc.strerror or exc}; "
                        "set BACKLM_HOME to a writable folder with free space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.train, summary.val = len(train), len(val)


def _check_target(folder: Path) -> None:
    check_writable(folder, "the dataset folder", "set BACKLM_HOME to a writable folder")
    _remove_stale_partials(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder: remove it or pick another name")


def existing_summary(folder: Path) -> ChatSummary:
    """Conversation counts of a dataset already on disk (from parquet metadata)."""
    summary = ChatSummary(path=folder, existed=True)
    for split in ("train", "val"):
        for shard in sorted(folder.glob(f"{split}_*.parquet")):
            summary.shards += 1
            try:
                rows = pq.ParquetFile(shard).metadata.num_rows
            except (OSError, pa.ArrowException):
                summary.notes.append(f"{shard} is not readable parquet")
                continue
            setattr(summary, split, getattr(summary, split) + rows)
    return summary


# --- the three sources ------------------------------------------------------------------------


def prepare_chat(
    folder: Path, force: bool = False, progress: Progress | None = None,
    roots: list[Path] | None = None, max_docs: int | None = None, workers: int = 2,
) -> ChatSummary:
    """Build the embedded default chat dataset in ``folder`` (no network): conversations about
    the local Python installation's code plus arithmetic, ~2% val by hash. An existing
    non-empty folder is left alone (``existed``) unless ``force``."""
    folder = Path(folder)
    _check_target(folder)
    # even with force: rebuilding would replace a text dataset with conversations
    require_kind(folder, "chat", "`backlm data prepare --chat`")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        return existing_summary(folder)
    check_rebuildable(folder)
    started = time.monotonic()
    chats = build_default_chat(roots=roots, max_docs=max_docs, workers=workers,
                               progress=progress)
    if len(chats) < 2:
        raise UserError("found too little documented Python code to build conversations from "
                        "(no .py sources with docstrings)")
    train, val = split_conversations(chats)
    if progress:
        progress("write", 0, 1)
    summary = ChatSummary(path=folder)
    _write_dataset(folder, train, val, summary)
    summary.seconds = time.monotonic() - started
    return summary


def import_chat(files: list[Path], folder: Path, val_fraction: float = 0.02) -> ChatSummary:
    """The user's messages JSONL ``files`` (or parquet files with a ``messages`` column) turned
    into a chat dataset in ``folder``.

    Every conversation of every file is validated before anything is written; the folder must
    not hold a dataset already.
    """
    started = time.monotonic()
    folder = Path(folder)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if not files:
        raise UserError("no input given: name one or more messages .jsonl files")
    _check_target(folder)
    if folder.is_dir() and any(folder.iterdir()):
        raise UserError(f"dataset folder {folder} already exists; pick another --dataset "
                        "or remove it")
    chats = [c for path in files for c in _read_chat_file(Path(path))]
    if len(chats) < 2:
        raise UserError(f"found {len(chats)} conversation(s) in {', '.join(map(str, files))}; "
                        "a chat dataset needs at least 2 (one for train, one for val)")
    summary = ChatSummary(path=folder, files=len(files))
    _write_dataset(folder, *split_conversations(chats, val_fraction), summary)
    summary.seconds = time.monotonic() - started
    return summary


def _read_chat_file(path: Path) -> list[Messages]:
    if not path.is_file():
        raise UserError(f"no such file: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix.lower() == ".parquet":
        return [check_conversation(c, f"{path} row {i}")
                for i, c in enumerate(read_conversations(path), 1)]
    return read_messages_jsonl(path)
