"""Named public datasets: a registry of sources and the shard-set download.

``download_dataset`` fetches the first N shards of a registered source (or a ``base_url``
override) with :func:`backlm.data.download.download_file`, checks each is a parquet shard
with a ``text`` column before it gets its final ``train_*``/``val_*`` name, and keeps a
``download.json`` manifest so reruns with other shard counts keep train and val disjoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from backlm.atomic import fsync_dir, write_json
from backlm.callbacks import Progress
from backlm.data.download import DownloadCancelled, _check_url, download_file
from backlm.data.shards import SPLITS, open_shard, shard_name
from backlm.errors import UserError
from backlm.paths import check_writable


@dataclass(frozen=True)
class DatasetSource:
    """Where a named dataset's files live and how they are numbered.

    ``kind`` is ``"shards"`` for pretraining text and ``"task"`` for evaluation sets (arc,
    mmlu, gsm8k), fetched as published by :func:`download_task` (``--task``); ``columns``
    lists the parquet columns a task file must have. ``"chat"`` sources (smoltalk) are
    conversation sets fetched by :func:`backlm.data.chat_download.download_chat`, whose
    ``val_file`` becomes the val shard.
    """

    base_url: str
    pattern: str
    max_shards: int
    kind: str = "shards"
    description: str = ""
    columns: tuple[str, ...] = ()
    val_file: str = ""

    def filename(self, index: int) -> str:
        """Remote file name of shard ``index``."""
        return self.pattern.format(index=index)

    def url(self, index: int, base_url: str | None = None) -> str:
        """URL of shard ``index``, from ``base_url`` (a mirror) if given."""
        return f"{(base_url or self.base_url).rstrip('/')}/{self.filename(index)}"


DATASETS: dict[str, DatasetSource] = {
    "fineweb-edu": DatasetSource(
        base_url="https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main",
        pattern="shard_{index:05d}.parquet",
        max_shards=1823,
        description="FineWeb-Edu, 100B tokens shuffled; ~100 MB parquet shards, text column",
    ),
    # Evaluation sets, test splits as published (read by backlm.evaluation.tasks).
    **{f"arc-{level.lower()}": DatasetSource(
        base_url="https://huggingface.co/datasets/allenai/ai2_arc/resolve/main",
        pattern=f"ARC-{level}/test-{{index:05d}}-of-00001.parquet", max_shards=1, kind="task",
        description=f"AI2 ARC-{level} test set, multiple choice",
        columns=("id", "question", "choices", "answerKey"),
    ) for level in ("Easy", "Challenge")},
    "mmlu": DatasetSource(
        base_url="https://huggingface.co/datasets/cais/mmlu/resolve/main",
        pattern="all/test-{index:05d}-of-00001.parquet", max_shards=1, kind="task",
        description="MMLU test set, all 57 subjects, multiple choice",
        columns=("question", "subject", "choices", "answer"),
    ),
    "gsm8k": DatasetSource(
        base_url="https://huggingface.co/datasets/openai/gsm8k/resolve/main",
        pattern="main/test-{index:05d}-of-00001.parquet", max_shards=1, kind="task",
        description="GSM8K test set, grade-school maths with worked solutions",
        columns=("question", "answer"),
    ),
    # Conversations for SFT (backlm.data.chat): first train files plus the test file as val.
    "smoltalk": DatasetSource(
        base_url="https://huggingface.co/datasets/HuggingFaceTB/smoltalk/resolve/main",
        pattern="data/all/train-{index:05d}-of-00004.parquet", max_shards=4, kind="chat",
        description="SmolTalk chat conversations (HuggingFaceTB), messages column",
        columns=("messages",), val_file="data/all/test-00000-of-00001.parquet",
    ),
}
# `backlm data download --task NAME` fetches these task sets.
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "arc": ("arc-easy", "arc-challenge"), "mmlu": ("mmlu",), "gsm8k": ("gsm8k",),
}
MANIFEST = "download.json"
STAGING = ".download"  # complete-but-unplaced files and .part files, keyed by remote name


@dataclass
class DownloadSummary:
    """What :func:`download_dataset` did."""

    name: str
    directory: Path
    train: list[Path]
    val: list[Path]
    downloaded: int = 0
    skipped: int = 0
    removed: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _Job:
    final: str  # name in the dataset folder, e.g. val_00000.parquet
    filename: str  # remote name, e.g. shard_00001.parquet
    url: str


def download_dataset(
    name: str,
    dataset_dir: Path,
    shards: int,
    base_url: str | None = None,
    val_shards: int = 1,
    workers: int = 2,
    progress: Progress | None = None,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30,
) -> DownloadSummary:
    """Fetch the first ``shards`` shards of ``name``; the last ``val_shards`` become ``val_*``.

    Each file is checked to be parquet with a ``text`` column before it gets its final name.
    A rerun skips shards in place, re-fetches those whose role changed (a larger ``shards``
    moves the val shard) and removes shards the new plan no longer holds, so train and val
    stay disjoint. ``progress(shard_name, done, total)`` reports bytes per shard.
    """
    check_writable(Path(dataset_dir), "the dataset folder", "set BACKLM_HOME to a writable folder")
    started = time.monotonic()
    jobs = _plan(name, shards, val_shards, workers, base_url)
    dataset_dir = Path(dataset_dir)
    manifest = _Manifest(dataset_dir, name)
    opts = {"retries": retries, "backoff": backoff, "timeout": timeout}
    try:
        sizes = _run_jobs(jobs, dataset_dir, manifest, workers, progress, opts)
    finally:
        with contextlib.suppress(OSError):  # kept while it holds .part files to resume
            (dataset_dir / STAGING).rmdir()
    removed = manifest.prune({job.final for job in jobs})
    finals = [dataset_dir / j.final for j in jobs]
    return DownloadSummary(
        name, dataset_dir, train=[p for p in finals if p.name.startswith("train_")],
        val=[p for p in finals if p.name.startswith("val_")],
        downloaded=sum(s is not None for s in sizes), skipped=sum(s is None for s in sizes),
        removed=removed, bytes=sum(s or 0 for s in sizes), seconds=time.monotonic() - started,
    )


def _plan(name: str, shards: int, val_shards: int, workers: int, base_url: str | None):
    if name not in DATASETS or DATASETS[name].kind != "shards":
        if name in DATASETS or name in TASK_GROUPS:
            group = next((g for g, names in TASK_GROUPS.items() if name in (g, *names)), name)
            chat = name in DATASETS and DATASETS[name].kind == "chat"
            what = "a chat set" if chat else "a task set"
            raise UserError(f"{name} is {what}: run `backlm data download --task {group}`")
        known = ", ".join(n for n, s in DATASETS.items() if s.kind == "shards")
        raise UserError(f"unknown dataset {name!r}: known datasets are {known}")
    source = DATASETS[name]
    if val_shards < 0 or workers < 1:
        raise UserError("--val-shards must be 0 or more and --workers at least 1")
    if not val_shards < shards <= source.max_shards:
        raise UserError(f"--shards must be between {val_shards + 1} (1 train + {val_shards} val) "
                        f"and {source.max_shards}, the number of {name} shards; got {shards}")
    if base_url is not None:
        _check_url(base_url)
    n_train = shards - val_shards
    return [
        _Job(shard_name("train", i) if i < n_train else shard_name("val", i - n_train),
             source.filename(i), source.url(i, base_url))
        for i in range(shards)
    ]


def _run_jobs(jobs, directory: Path, manifest: _Manifest, workers: int, progress, opts):
    """Run the downloads in a small pool; returns bytes per job (None where skipped)."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(_fetch_shard, job, directory, manifest, progress, cancel, opts)
                   for job in jobs]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            # On failure or Ctrl-C, stop the other downloads within one chunk; .part files stay.
            cancel.set()
            for future in futures:
                future.cancel()
    errors = [f.exception() for f in futures if f.done() and not f.cancelled()]
    first = next((e for e in errors if e and not isinstance(e, DownloadCancelled)), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]


def _fetch_shard(job: _Job, directory: Path, manifest: _Manifest, progress, cancel, opts):
    if manifest.holds(job):
        return None
    report = None if progress is None else (lambda done, total: progress(job.final, done, total))
    staged = download_file(job.url, directory / STAGING / job.filename, progress=report,
                           cancel=cancel, validate=lambda p: _check_shard(job.url, p), **opts)
    size = staged.stat().st_size
    # Recorded before the rename: after a crash in between, the size check in holds() fails.
    manifest.record(job, size)
    os.replace(staged, directory / job.final)
    fsync_dir(directory)
    return size


def _check_shard(url: str, part: Path) -> None:
    try:
        open_shard(part)
    except UserError as exc:
        raise UserError(f"{url} is not a parquet shard with a text column ({exc}); "
                        "check --base-url") from None


class _Manifest:
    """``download.json``: the remote file and size behind each shard of the folder."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name, self.path = directory, name, directory / MANIFEST
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise UserError(f"{self.path} is unreadable; delete it and rerun") from None
            if data.get("source") == name:
                self.files = dict(data.get("files", {}))
        present = sorted(p.name for s in SPLITS for p in directory.glob(f"{s}_*.parquet"))
        foreign = [n for n in present if n not in self.files]
        if foreign:
            raise UserError(f"{directory} already holds shards not downloaded from {name} "
                            f"({foreign[0]}); pick another --dataset or remove them")

    def holds(self, job: _Job) -> bool:
        """Whether the shard is in place, from the same remote file."""
        entry, path = self.files.get(job.final), self.directory / job.final
        return (entry is not None and entry.get("file") == job.filename and path.exists()
                and path.stat().st_size == entry.get("bytes"))

    def record(self, job: _Job, size: int) -> None:
        """Note that ``job.final`` now comes from ``job.filename``."""
        with self.lock:
            self.files[job.final] = {"file": job.filename, "bytes": size}
            self._save()

    def prune(self, keep: set[str]) -> int:
        """Delete shards of an earlier run that are not in ``keep``; returns how many."""
        stale = sorted(set(self.files) - keep)
        for final in stale:
            (self.directory / final).unlink(missing_ok=True)
            del self.files[final]
        if stale:
            self._save()
        return len(stale)

    def _save(self) -> None:
        write_json(self.path, {"source": self.name, "files": dict(sorted(self.files.items()))})


# --- task sets ------------------------------------------------------------------------------


@dataclass
class TaskDownloadSummary:
    """What :func:`download_task` did."""

    task: str
    files: list[Path]
    downloaded: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0


def task_members(task: str) -> tuple[str, ...]:
    """Registry names a ``--task`` value stands for (``arc`` is ARC-Easy and ARC-Challenge)."""
    if task in TASK_GROUPS:
        return TASK_GROUPS[task]
    if task in DATASETS and DATASETS[task].kind == "task":
        return (task,)
    raise UserError(f"unknown task set {task!r}: choose one of {', '.join(TASK_GROUPS)}")


def download_task(
    task: str,
    tasks_dir: Path,
    base_url: str | None = None,
    progress: Progress | None = None,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30,
) -> TaskDownloadSummary:
    """Fetch task set ``task`` into ``tasks_dir/<name>/`` under the files' published names.

    Uses :func:`download_file` (retries, resume, atomic rename); each file must be parquet with
    the task's columns before it gets its final name, and files already in place are skipped.
    ``base_url`` replaces each source's home (the published sub-paths are kept).
    """
    check_writable(Path(tasks_dir), "the task folder", "set BACKLM_HOME to a writable folder")
    started = time.monotonic()
    members = task_members(task)
    if base_url is not None:
        _check_url(base_url)
    summary = TaskDownloadSummary(task, [])
    for name in members:
        source = DATASETS[name]
        for index in range(source.max_shards):
            url = source.url(index, base_url)
            dest = Path(tasks_dir) / name / Path(source.filename(index)).name
            summary.files.append(dest)
            if dest.exists():
                summary.skipped += 1
                continue
            label = f"{name}/{dest.name}"
            report = None if progress is None else (
                lambda done, total, lb=label: progress(lb, done, total))
            download_file(url, dest, progress=report, retries=retries, backoff=backoff,
                          timeout=timeout,
                          validate=lambda p, u=url, s=source: _check_task_file(u, p, s.columns))
            summary.downloaded += 1
            summary.bytes += dest.stat().st_size
    summary.seconds = time.monotonic() - started
    return summary


def _check_task_file(url: str, part: Path, columns: tuple[str, ...]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(part).schema_arrow.names
    except (OSError, pa.ArrowException):
        names = None
    if names is None or any(c not in names for c in columns):
        raise UserError(f"{url} is not a parquet file with columns {', '.join(columns)}; "
                        "check --base-url")
