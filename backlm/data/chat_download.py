"""Downloading a registered chat set (SmolTalk) into a chat dataset folder.

The first N train files of the source become ``train_00000.parquet``, ... and its test file
``val_00000.parquet``. Each goes through :func:`backlm.data.download.download_file` (retries,
resume, atomic rename) and must be parquet with a ``messages`` column before it gets its
final name; files already in place are skipped, so a rerun continues or grows the set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from backlm.callbacks import Progress
from backlm.data.datasets import DATASETS
from backlm.data.download import _check_url, download_file
from backlm.errors import UserError
from backlm.paths import check_writable

DEFAULT_CHAT_SHARDS = 1


@dataclass
class ChatDownloadSummary:
    """What :func:`download_chat` did."""

    name: str
    directory: Path
    files: list[Path] = field(default_factory=list)
    downloaded: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0


def is_chat_source(name: str) -> bool:
    """Whether ``name`` is a registered chat set (``backlm data download --task NAME``)."""
    return name in DATASETS and DATASETS[name].kind == "chat"


def download_chat(
    name: str,
    directory: Path,
    shards: int = DEFAULT_CHAT_SHARDS,
    base_url: str | None = None,
    progress: Progress | None = None,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30,
) -> ChatDownloadSummary:
    """Fetch the first ``shards`` train files and the test file of chat set ``name``.

    ``base_url`` replaces the source's home (the published sub-paths are kept). Everything is
    checked before the first byte is fetched: the name, the shard count, the URL.
    """
    if not is_chat_source(name):
        known = ", ".join(n for n in DATASETS if is_chat_source(n))
        raise UserError(f"unknown chat set {name!r}: known chat sets are {known}")
    source = DATASETS[name]
    if not 1 <= shards <= source.max_shards:
        raise UserError(f"--shards must be between 1 and {source.max_shards} (the number of "
                        f"{name} train files); got {shards}")
    if base_url is not None:
        _check_url(base_url)
    directory = Path(directory)
    check_writable(directory, "the dataset folder", "set BACKLM_HOME to a writable folder")
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file, not a dataset folder; pick another --dataset")
    home = (base_url or source.base_url).rstrip("/")
    jobs = [(f"train_{i:05d}.parquet", source.url(i, base_url)) for i in range(shards)]
    jobs.append(("val_00000.parquet", f"{home}/{source.val_file}"))
    started = time.monotonic()
    summary = ChatDownloadSummary(name, directory)
    for final, url in jobs:
        dest = directory / final
        summary.files.append(dest)
        if dest.exists():
            summary.skipped += 1
            continue
        report = None if progress is None else (
            lambda done, total, label=final: progress(label, done, total))
        download_file(url, dest, progress=report, retries=retries, backoff=backoff,
                      timeout=timeout, validate=lambda part, u=url: check_chat_file(u, part))
        summary.downloaded += 1
        summary.bytes += dest.stat().st_size
    summary.seconds = time.monotonic() - started
    return summary


def check_chat_file(url: str, part: Path) -> None:
    """Raise :class:`UserError` unless ``part`` is parquet with a list or string ``messages``
    column (only the schema is read: the files are hundreds of megabytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(part).schema_arrow
    except (OSError, pa.ArrowException):
        schema = None
    kind = None if schema is None or "messages" not in schema.names else (
        schema.field("messages").type)
    if kind is None or not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
                            or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{url} is not a parquet file with a `messages` column of "
                        "conversations; check --base-url")
