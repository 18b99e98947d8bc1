"""Parquet shards with a ``text`` column: the on-disk layout of every dataset, and the kind
(text or chat) a dataset folder's shards record.

A dataset is a folder ``$BACKLM_HOME/data/<name>/`` holding ``{split}_{index:05d}.parquet``
files (splits: ``train``, ``val``, ``ood``) and a ``tokenizer/`` folder. Shards are written
atomically, so a crash never leaves a half-written shard under its final name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from backlm.atomic import atomic_path
from backlm.errors import UserError

SPLITS = ("train", "val", "ood")
ROW_GROUP_DOCS = 1024
SHARD_CHARS = 64 * 1024 * 1024  # a new shard every ~64M characters (public shards are similar)


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``."""
    return f"{split}_{index:05d}.parquet"


def write_shard(path: str | Path, texts: list[str], row_group_docs: int = ROW_GROUP_DOCS) -> None:
    """Atomically write ``texts`` as one parquet shard with a ``text`` column."""
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_docs, compression="zstd")


class ShardWriter:
    """Accumulate documents of one split and roll them into numbered shards by size."""

    def __init__(
        self, directory: str | Path, split: str, shard_chars: int = SHARD_CHARS, start: int = 0
    ) -> None:
        self.directory = Path(directory)
        self.split = split
        self.shard_chars = shard_chars
        self.index = start
        self.paths: list[Path] = []
        self.docs = 0
        self.chars = 0
        self._buf: list[str] = []
        self._buf_chars = 0

    def add(self, text: str) -> None:
        """Queue one document; writes a shard when the current one is full."""
        self._buf.append(text)
        self._buf_chars += len(text)
        self.docs += 1
        self.chars += len(text)
        if self._buf_chars >= self.shard_chars:
            self.flush()

    def extend(self, texts: Iterable[str]) -> None:
        """Queue many documents."""
        for text in texts:
            self.add(text)

    def flush(self) -> None:
        """Write the queued documents (if any) as the next shard."""
        if not self._buf:
            return
        path = self.directory / shard_name(self.split, self.index)
        write_shard(path, self._buf)
        self.paths.append(path)
        self.index += 1
        self._buf, self._buf_chars = [], 0

    def close(self) -> list[Path]:
        """Flush and return every shard written."""
        self.flush()
        return self.paths


def list_shards(directory: str | Path, split: str = "train") -> list[Path]:
    """Sorted shards of ``split`` in ``directory``; a missing or empty split is a UserError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(
            f"data folder {directory} does not exist: run `backlm data prepare` "
            "(or `backlm data download` / `backlm data import`) first"
        )
    paths = sorted(directory.glob(f"{split}_*.parquet"))
    if not paths:
        raise UserError(
            f"no {split} shards in {directory}: run `backlm data prepare` "
            "(or `backlm data download` / `backlm data import`) first"
        )
    return paths


def open_shard(path: str | Path) -> pq.ParquetFile:
    """Open a shard and check it has a string ``text`` column."""
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read parquet shard {path}: {_first_line(exc)}") from None
    field = pf.schema_arrow.get_field_index("text")
    if field < 0:
        cols = ", ".join(pf.schema_arrow.names) or "none"
        raise UserError(f"shard {path} has no 'text' column (columns: {cols})")
    if not pa.types.is_string(pf.schema_arrow.field("text").type) and not pa.types.is_large_string(
        pf.schema_arrow.field("text").type
    ):
        raise UserError(f"shard {path}: the 'text' column must hold strings")
    return pf


def read_row_group(pf: pq.ParquetFile, index: int, path: str | Path = "") -> list[str]:
    """The texts of one row group (nulls become empty strings)."""
    try:
        col = pf.read_row_group(index, columns=["text"]).column("text")
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read row group {index} of {path}: {_first_line(exc)}") from None
    return [t if t is not None else "" for t in col.to_pylist()]


def iter_texts(path: str | Path) -> Iterator[str]:
    """Every text of a shard, row group by row group."""
    pf = open_shard(path)
    for i in range(pf.num_row_groups):
        yield from read_row_group(pf, i, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- a dataset's kind -------------------------------------------------------------------------
# The shards record it: a text dataset's have a ``text`` column, a chat dataset's a ``messages``
# column. Read from the first shard's schema (parquet metadata, no rows), so every folder,
# whatever wrote it and however old, says what it is and no second record can disagree.

KINDS = {"text": "text", "messages": "chat"}


def dataset_kind(folder: Path) -> str | None:
    """``"text"`` or ``"chat"`` for a dataset folder with shards; None when it has none (or
    its first shard's columns say neither)."""
    for path in sorted(Path(folder).glob("*_*.parquet")):
        if path.name.split("_")[0] not in SPLITS:
            continue
        try:
            names = pq.read_schema(path).names
        except (OSError, pa.ArrowException):
            return None  # an unreadable shard is refused where it is read, naming the file
        return next((KINDS[n] for n in ("messages", "text") if n in names), None)
    return None


def require_kind(folder: Path, want: str, what: str) -> None:
    """Refuse (:class:`UserError`, one line naming the kind found) a dataset folder whose
    shards are of another kind than ``want``; ``what`` says who needs it (``--dataset``,
    ``chat.dataset``). A folder without shards passes: whoever reads it says what is missing."""
    kind = dataset_kind(folder)
    if kind is None or kind == want:
        return
    column = {"text": "text", "chat": "messages"}[kind]
    example = "pydocs-chat" if want == "chat" else "pydocs"
    raise UserError(f"dataset {Path(folder).name!r} is a {kind} dataset (its shards have a "
                    f"{column} column), but {what} needs a {want} dataset: name a {want} "
                    f"dataset (e.g. {example}) or a new one")
