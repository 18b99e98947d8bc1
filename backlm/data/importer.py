"""Turn the user's own text (.txt, .jsonl, .parquet files or folders of them) into shards.

Documents are split into train/val by a hash of their text, so the split does not depend on
file order and re-importing the same text puts it on the same side. Everything is written to
a hidden staging folder beside the dataset and moved in only after every input has been read
without error: a bad file leaves the dataset folder exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from backlm.atomic import fsync_dir
from backlm.data.shards import SHARD_CHARS, SPLITS, ShardWriter, require_kind
from backlm.errors import (
    FILE_FIX,
    UserError,
    check_text,
    jsonl_records,
    text_from_bytes,
)
from backlm.paths import check_writable

EXTENSIONS = (".txt", ".jsonl", ".parquet")
_SHARD = re.compile(r"^(train|val|ood)_(\d{5,})\.parquet$")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass
class ImportSummary:
    """What :func:`import_files` wrote."""

    directory: Path
    files: int = 0
    skipped_files: int = 0  # files inside folders whose extension is not importable
    docs: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    chars: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    shards: list[Path] = field(default_factory=list)
    appended: bool = False


def import_files(
    paths: list[Path],
    dataset_dir: Path,
    val_fraction: float = 0.01,
    text_field: str = "text",
    *,
    split_paragraphs: bool = False,
    append: bool = False,
    shard_chars: int = SHARD_CHARS,
    progress: Callable[[Path, int, int], None] | None = None,
) -> ImportSummary:
    """Import ``paths`` as shards of ``dataset_dir``; returns what was written.

    A dataset that already has shards is refused unless ``append`` is set, in which case the
    new shards take the next free index of each split and existing shards are never touched.
    When ``val_fraction`` > 0 and the hash split leaves val empty (small imports), the
    document with the smallest hash moves to val, so training always has a val split.
    ``progress(path, index, n_files)`` is called before each file is read.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    dataset_dir = Path(dataset_dir)
    files, skipped = collect_files(paths)
    check_writable(dataset_dir, "the dataset folder", "set BACKLM_HOME to a writable folder")
    require_kind(dataset_dir, "text", "`backlm data import` (text)")
    starts, has_val = _start_indices(dataset_dir, append)
    summary = ImportSummary(dataset_dir, len(files), skipped, appended=append)
    staging = None
    try:
        staging = _staging_dir(dataset_dir)
        writers = {s: ShardWriter(staging, s, shard_chars, start=starts[s]) for s in ("train", "val")}
        splitter = _Splitter(writers, val_fraction, need_val=val_fraction > 0 and not has_val)
        for i, path in enumerate(files):
            if progress is not None:
                progress(path, i, len(files))
            for text in iter_documents(path, text_field, split_paragraphs):
                splitter.add(text)
        splitter.close()
        for split, writer in writers.items():
            writer.close()
            summary.docs[split], summary.chars[split] = writer.docs, writer.chars
        if not sum(summary.docs.values()):
            names = ", ".join(str(p) for p in paths)
            raise UserError(f"no documents found in {names}: the files hold no non-blank text")
        summary.shards = _publish(staging, dataset_dir)
    except OSError as exc:  # reading errors are UserErrors already; this is the writing side
        raise UserError(f"cannot write shards beside {dataset_dir}: {exc.strerror or exc}; "
                        "check free disk space and permissions") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def collect_files(paths: list[Path]) -> tuple[list[Path], int]:
    """Importable files under ``paths`` (folders are searched recursively, hidden entries
    skipped) and how many other files the folders held. Missing paths, explicit files of an
    unsupported type and folders without importable files are UserErrors."""
    if not paths:
        raise UserError("no input given: name .txt, .jsonl or .parquet files or folders")
    files: dict[Path, Path] = {}  # resolved -> as named: a file given twice is read once
    skipped = 0
    for path in map(Path, paths):
        if path.is_dir():
            found, other = _scan_dir(path)
            for file in found:
                files.setdefault(file.resolve(), file)
            skipped += other
        elif path.is_file():
            if path.suffix.lower() not in EXTENSIONS:
                raise UserError(f"cannot import {path}: unsupported file type "
                                f"'{path.suffix or '(none)'}'; use .txt, .jsonl or .parquet")
            files.setdefault(path.resolve(), path)
        else:
            raise UserError(f"no such file or folder: {path}")
    return list(files.values()), skipped


def _scan_dir(directory: Path) -> tuple[list[Path], int]:
    found, other = [], 0
    for path in sorted(directory.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        if path.is_file():
            if path.suffix.lower() in EXTENSIONS:
                found.append(path)
            else:
                other += 1
    if not found:
        raise UserError(f"no .txt, .jsonl or .parquet files in folder {directory}")
    return found, other


def iter_documents(path: Path, text_field: str = "text", split_paragraphs: bool = False
                   ) -> Iterator[str]:
    """The non-blank documents of one input file, validated as they are read."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from _txt_documents(path, split_paragraphs)
    elif suffix == ".jsonl":
        yield from _jsonl_documents(path, text_field)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, text_field)
    else:
        raise UserError(f"cannot import {path}: use .txt, .jsonl or .parquet")


def _txt_documents(path: Path, split_paragraphs: bool) -> Iterator[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    text = check_text(text_from_bytes(data, str(path), FILE_FIX), str(path), FILE_FIX)
    parts = _PARAGRAPH_BREAK.split(text) if split_paragraphs else [text]
    for part in parts:
        if part.strip():
            yield part.strip()


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    for where, record in jsonl_records(path, "each line must be one JSON object"):
        text = _jsonl_text(record, where, text_field)
        if text.strip():
            yield text


def _jsonl_text(record: object, where: str, text_field: str) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a {text_field!r} field, "
                        f"got {type(record).__name__}")
    if text_field not in record:
        keys = ", ".join(list(record)[:8]) or "none"
        raise UserError(f"{where}: no {text_field!r} field (keys: {keys}); "
                        "pass --text-field to name the field holding the text")
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise UserError(f"{where}: field {text_field!r} must be a string, "
                        f"got {type(text).__name__}")
    return text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {path} as parquet ({_first_line(exc)}); "
                        "is it a parquet file?") from None
    with pf:
        schema = pf.schema_arrow
        if text_field not in schema.names:
            cols = ", ".join(schema.names[:8]) or "none"
            raise UserError(f"{path} has no {text_field!r} column (columns: {cols}); "
                            "pass --text-field to name the text column")
        if not _is_text(schema.field(text_field).type):
            raise UserError(f"{path}: column {text_field!r} must hold strings, "
                            f"not {schema.field(text_field).type}")
        done = 0
        for i in range(pf.num_row_groups):
            try:
                column = pf.read_row_group(i, columns=[text_field]).column(text_field)
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"cannot read row group {i} of {path} "
                                f"({_first_line(exc)}); the file is corrupt") from None
            try:
                texts = column.to_pylist()
            except UnicodeDecodeError as exc:
                raise UserError(f"{path} row group {i}: column {text_field!r} is not valid "
                                f"UTF-8 ({exc.reason}): {FILE_FIX}") from None
            for row, text in enumerate(texts, done + 1):
                if text and text.strip():
                    yield check_text(text, f"{path} row {row}", FILE_FIX,
                                     field=text_field)
            done += len(column)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _is_text(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def doc_hash(text: str) -> float:
    """A stable number in [0, 1) for ``text``: documents below ``val_fraction`` go to val."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Splitter:
    """Route documents to train/val by hash, holding back the lowest-hash train document so
    it can become the val split if the hash split leaves val empty."""

    def __init__(self, writers: dict[str, ShardWriter], val_fraction: float, need_val: bool):
        self.writers, self.val_fraction, self.need_val = writers, val_fraction, need_val
        self.held: tuple[float, str] | None = None

    def add(self, text: str) -> None:
        """Send one document to its split."""
        h = doc_hash(text)
        if h < self.val_fraction:
            self.writers["val"].add(text)
        elif self.held is None:
            self.held = (h, text)
        else:
            if h < self.held[0]:
                self.held, text = (h, text), self.held[1]
            self.writers["train"].add(text)

    def close(self) -> None:
        """Place the held document: in val when val is still empty (and train is not)."""
        if self.held is None:
            return
        empty_val = self.writers["val"].docs == 0 and self.writers["train"].docs > 0
        split = "val" if self.need_val and empty_val else "train"
        self.writers[split].add(self.held[1])
        self.held = None


def _start_indices(dataset_dir: Path, append: bool) -> tuple[dict[str, int], bool]:
    """Next free shard index per split, and whether a val split exists already."""
    existing = [m for p in _listdir(dataset_dir) if (m := _SHARD.match(p))]
    if existing and not append:
        raise UserError(f"dataset folder {dataset_dir} already has shards: pass --append to "
                        "add to it, or pick another --dataset")
    starts = dict.fromkeys(SPLITS, 0)
    for m in existing:
        starts[m.group(1)] = max(starts[m.group(1)], int(m.group(2)) + 1)
    return starts, any(m.group(1) == "val" for m in existing)


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise UserError(f"{directory} is a file, not a dataset folder; pick another --dataset"
                        ) from None


def _staging_dir(dataset_dir: Path) -> Path:
    # Beside the dataset (same filesystem, so the final moves are renames), hidden, and made
    # with mkdir rather than mkdtemp so it gets normal permissions if it becomes the dataset.
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = dataset_dir.parent / f".{dataset_dir.name}.import-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def _publish(staging: Path, dataset_dir: Path) -> list[Path]:
    names = sorted(p.name for p in staging.glob("*.parquet"))
    if not dataset_dir.exists():
        # One rename: the new dataset appears whole or not at all.
        os.replace(staging, dataset_dir)
    else:
        for name in names:
            os.replace(staging / name, dataset_dir / name)
    fsync_dir(dataset_dir)
    fsync_dir(dataset_dir.parent)
    return [dataset_dir / name for name in names]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
