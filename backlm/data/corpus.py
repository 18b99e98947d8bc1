"""The embedded default corpus: docstrings of the local Python installation (DESIGN.md §6).

``backlm data prepare`` needs no network: the standard library and the installed packages
(torch, numpy, matplotlib, ... are dependencies) hold tens of megabytes of English technical
prose in their docstrings. Nothing is imported: sources are read as text and every docstring
is confirmed by :mod:`ast`. The interpreter's help topics (``pydoc_data/topics.py``) are the
out-of-distribution set.

Docstrings are found by :mod:`backlm.data.docstrings`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import site
import sys
import sysconfig
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backlm.atomic import check_replaceable, mark_owned, swap_folder
from backlm.callbacks import Progress
from backlm.data.docstrings import PARSE_ERRORS, file_docstrings
from backlm.errors import UserError
from backlm.paths import check_writable

MAX_FILE_BYTES = 4 * 1024 * 1024  # larger .py files are generated tables, not prose
VAL_PER_MILLE = 10  # ~1% of documents go to val
SKIP_DIRS = {"test", "tests", "__pycache__", "site-packages", "dist-packages", "node_modules"}
SUMMARY_FILE = "prepare.json"

# --- sources --------------------------------------------------------------------------------


def default_roots() -> list[Path]:
    """The standard library, then every site-packages folder of this interpreter."""
    paths = sysconfig.get_paths()
    candidates = [paths["stdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    roots: dict[Path, Path] = {}
    for c in candidates:
        if Path(c).is_dir():
            roots.setdefault(Path(c).resolve(), Path(c))
    return list(roots.values())


def default_ood_source() -> Path:
    """``pydoc_data/topics.py`` of the standard library."""
    return Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"


def source_files(roots: Sequence[Path], max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """Every ``.py`` file under ``roots`` in a fixed order (roots in turn, sorted walks).

    Test folders, caches and nested site-packages are skipped (the latter are roots of their
    own); a file reached twice (symlinks, overlapping roots) is listed once.
    """
    files: list[Path] = []
    seen: set[str] = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(
                d for d in dirnames
                if d not in SKIP_DIRS and not d.endswith((".dist-info", ".egg-info"))
            )
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                try:
                    if real in seen or os.path.getsize(real) > max_bytes:
                        continue
                except OSError:
                    continue
                seen.add(real)
                files.append(Path(path))
    return files


def extract_docs(
    files: Sequence[Path], workers: int = 2, progress: Progress | None = None
) -> list[str]:
    """Unique docstrings of ``files`` in file order (the first copy of a repeat wins)."""
    docs: list[str] = []
    seen: set[bytes] = set()
    total = len(files)

    def take(i: int, found: list[str]) -> None:
        for doc in found:
            key = _digest(doc)
            if key not in seen:
                seen.add(key)
                docs.append(doc)
        if progress and (i % 256 == 0 or i == total):
            progress("extract", i, total)

    if workers <= 1 or total < 2:
        for i, path in enumerate(files, 1):
            take(i, file_docstrings(path))
        return docs
    import multiprocessing

    with multiprocessing.Pool(workers) as pool:
        # imap keeps file order, so the result does not depend on the number of workers.
        results = pool.imap(file_docstrings, [str(p) for p in files], chunksize=32)
        for i, found in enumerate(results, 1):
            take(i, found)
    return docs


def ood_docs(path: Path) -> list[str]:
    """One document per help topic of a ``pydoc_data/topics.py`` (read with ast)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, *PARSE_ERRORS) as exc:
        raise UserError(f"cannot read help topics {path}: {exc}".splitlines()[0]) from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets)
        ):
            try:
                topics = ast.literal_eval(node.value)
            except ValueError:
                break
            if isinstance(topics, dict):
                texts = (v.strip() for v in topics.values() if isinstance(v, str))
                return list(dict.fromkeys(t for t in texts if t))
    raise UserError(f"{path} has no `topics = {{...}}` mapping of help topics")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def split_docs(docs: Iterable[str]) -> tuple[list[str], list[str]]:
    """Deterministic (train, val) split by a hash of each document's text.

    About 1% goes to val (at least one document when there are two or more). Each split is
    ordered by a second slice of the hash: a fixed shuffle, so a stream read from the start
    mixes packages instead of walking them alphabetically.
    """
    train: list[tuple[bytes, str]] = []
    val: list[tuple[bytes, str]] = []
    for doc in docs:
        key = _digest(doc)
        is_val = int.from_bytes(key[:8], "big") % 1000 < VAL_PER_MILLE
        (val if is_val else train).append((key, doc))
    if not val and len(train) >= 2:
        pick = min(range(len(train)), key=lambda i: train[i][0])
        val.append(train.pop(pick))
    def shuffled(pairs: list[tuple[bytes, str]]) -> list[str]:
        return [d for _, d in sorted(pairs, key=lambda kd: kd[0][8:])]

    return shuffled(train), shuffled(val)


# --- prepare --------------------------------------------------------------------------------


@dataclass
class SplitStats:
    """Size of one split of a prepared dataset."""

    documents: int = 0
    characters: int = 0
    bytes: int = 0  # UTF-8
    tokens: int = 0
    shards: int = 0


@dataclass
class PrepareSummary:
    """What ``prepare_corpus`` built (or found already built, with ``existed``)."""

    path: Path
    splits: dict[str, SplitStats] = field(default_factory=dict)
    vocab_size: int = 0
    files: int = 0  # source files scanned
    seconds: float = 0.0
    existed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """UTF-8 bytes over every split."""
        return sum(s.bytes for s in self.splits.values())


def prepare_corpus(
    dataset_dir: Path,
    vocab_size: int = 8192,
    workers: int = 2,
    force: bool = False,
    progress: Progress | None = None,
    roots: list[Path] | None = None,
    ood_source: Path | None = None,
) -> PrepareSummary:
    """Build the docstring dataset in ``dataset_dir``: shards, tokenizer and token counts.

    Everything is written to a hidden sibling folder first and renamed into place at the
    end, so an interrupted run leaves no half-built dataset. An existing (non-empty) dataset
    is left alone unless ``force``.
    """
    from backlm.data.shards import require_kind
    from backlm.tokenizer import check_vocab_size

    check_vocab_size(vocab_size)  # fail now, not after a minute of reading files
    dataset_dir = Path(dataset_dir)
    check_writable(dataset_dir, "the dataset folder", "set BACKLM_HOME to a writable folder")
    _remove_stale_partials(dataset_dir)
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise UserError(f"{dataset_dir} exists and is not a folder: remove it or pick another name")
    require_kind(dataset_dir, "text", "`backlm data prepare`")
    if dataset_dir.is_dir() and any(dataset_dir.iterdir()) and not force:
        summary = _existing_summary(dataset_dir)
        _cache_existing(dataset_dir, summary, workers, progress)
        return summary
    check_rebuildable(dataset_dir)
    t0 = time.monotonic()
    tmp = dataset_dir.parent / f".{dataset_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = PrepareSummary(path=dataset_dir)
        report = progress or (lambda stage, done, total: None)
        _build(tmp, summary, vocab_size, workers, report, roots, ood_source)
        summary.seconds = time.monotonic() - t0
        _write_summary(tmp, summary)
        _swap_into_place(tmp, dataset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _build(
    tmp: Path, summary: PrepareSummary, vocab_size: int, workers: int, report: Progress,
    roots: list[Path] | None, ood_source: Path | None,
) -> None:
    from backlm.data.shards import ShardWriter
    from backlm.data.token_cache import cached_tokens, ensure_tokens
    from backlm.data.vocab import dataset_tokenizer

    report("scan", 0, 0)
    files = source_files(roots if roots is not None else default_roots())
    summary.files = len(files)
    docs = extract_docs(files, workers, report)
    if not docs:
        raise UserError("found no docstrings to build a corpus from (no .py sources found)")
    train, val = split_docs(docs)
    source = ood_source or default_ood_source()
    if ood_source is None and not source.is_file():
        ood: list[str] = []
        summary.notes.append(f"no help topics at {source}: the ood split is empty")
    else:
        ood = ood_docs(source)
    splits = {"train": train, "val": val, "ood": ood}
    paths = {}
    for i, (name, texts) in enumerate(splits.items()):
        report("write", i, len(splits))
        writer = ShardWriter(tmp, name)
        writer.extend(texts)
        paths[name] = writer.close()
        summary.splits[name] = SplitStats(
            documents=writer.docs,
            characters=writer.chars,
            bytes=sum(len(t.encode("utf-8")) for t in texts),
            shards=len(paths[name]),
        )
    report("tokenizer", 0, 1)
    tokenizer = dataset_tokenizer(tmp, vocab_size)
    summary.vocab_size = tokenizer.vocab_size
    report("tokenizer", 1, 1)
    # The train split is tokenized once, into the token cache the loader reads (its count
    # comes from there); the small held-out splits are only counted.
    ensure_tokens(paths["train"], tokenizer, max(1, workers), report)
    summary.splits["train"].tokens = cached_tokens(paths["train"], tokenizer) or 0
    del splits["train"]
    total, done = sum(len(t) for t in splits.values()), 0
    for name, texts in splits.items():
        for lo in range(0, len(texts), 2048):
            batch = texts[lo : lo + 2048]
            ids = tokenizer.encode_batch(batch, num_threads=max(1, workers))
            summary.splits[name].tokens += sum(len(x) for x in ids)
            done += len(batch)
            report("count", done, total)


def _write_summary(directory: Path, summary: PrepareSummary) -> None:
    from backlm.atomic import write_json

    data = asdict(summary)
    data["path"] = str(summary.path)
    data["source"] = "python docstrings"
    data["python"] = sys.version.split()[0]
    write_json(directory / SUMMARY_FILE, data)


def _existing_summary(dataset_dir: Path) -> PrepareSummary:
    summary = PrepareSummary(path=dataset_dir, existed=True)
    try:
        data = json.loads((dataset_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        summary.splits = {k: SplitStats(**v) for k, v in data["splits"].items()}
        summary.vocab_size = int(data.get("vocab_size", 0))
        summary.files = int(data.get("files", 0))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        # Not built by prepare (imported or downloaded): report what the shards show.
        for split in ("train", "val", "ood"):
            shards = sorted(dataset_dir.glob(f"{split}_*.parquet"))
            if shards:
                summary.splits[split] = SplitStats(shards=len(shards))
        summary.notes.append(f"{dataset_dir} was not built by `backlm data prepare`")
    return summary


def _cache_existing(dataset_dir: Path, summary: PrepareSummary, workers: int,
                    progress: Progress | None) -> None:
    """Write the token cache of an existing dataset's train shards where missing or stale
    (datasets prepared before the cache existed, imported or downloaded ones)."""
    from backlm.data.token_cache import TOKENS_DIR, ensure_tokens
    from backlm.data.vocab import existing_tokenizer

    tokenizer = existing_tokenizer(dataset_dir)
    if tokenizer is None:
        return
    try:
        written, notes = ensure_tokens(sorted(dataset_dir.glob("train_*.parquet")), tokenizer,
                                       max(1, workers), progress)
    except UserError as exc:  # a damaged shard: training will say so; the summary stands
        summary.notes.append(f"token cache not written: {exc}")
        return
    summary.notes += notes
    if written > len(notes):  # some had no cache at all (the rest are noted as rebuilt)
        summary.notes.append(f"wrote the token cache of {written} train shard(s) in "
                             f"{dataset_dir / TOKENS_DIR}")


DATASET = "the dataset folder"  # what made it, in its marker and in messages


def is_old_dataset(folder: Path) -> bool:
    """Whether ``folder`` is a dataset an older backlm wrote (before the ownership marker):
    parquet shards, the prepare summary, the tokenizer and token cache folders, nothing else."""
    from backlm.data.token_cache import TOKENS_DIR
    from backlm.data.vocab import tokenizer_dir

    dirs = {tokenizer_dir(folder).name, TOKENS_DIR}
    return all(not p.is_symlink() and (
        (p.is_file() and (p.suffix == ".parquet" or p.name == SUMMARY_FILE))
        or (p.is_dir() and p.name in dirs)) for p in folder.iterdir())


def check_rebuildable(folder: Path) -> None:
    """Before a ``--force`` rebuild does any work: ``folder`` is absent or a dataset backlm
    made (a user's folder is never replaced)."""
    check_replaceable(folder, DATASET, is_old_dataset)


def _swap_into_place(tmp: Path, final: Path) -> None:
    mark_owned(tmp, DATASET)
    check_rebuildable(final)  # again, just before the swap
    # the pid in the name lets a later prepare restore it if this process dies mid-swap
    swap_folder(tmp, final, final.parent / f".{final.name}.old-{os.getpid()}")


def _remove_stale_partials(final: Path) -> None:
    """Delete partial builds left by prepare runs that were killed (their pid is gone)."""
    if not final.parent.is_dir():
        return
    for path in sorted(final.parent.glob(f".{final.name}.*-*")):
        kind, _, pid = path.name[len(final.name) + 2 :].partition("-")
        try:
            os.kill(int(pid), 0)  # signal 0 only checks that the process exists
        except ProcessLookupError:
            if kind == "old" and not final.exists():
                os.replace(path, final)  # killed mid-swap: the previous dataset comes back
            elif kind in ("old", "partial"):
                shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):
            pass  # not a pid, or a live process of another user: leave it
