"""Pre-tokenized shards: every document's reading-order token ids, so the training loader
skips parquet decoding and tokenization (issue 17).

Layout: ``<dataset>/tokens/<shard stem>.<tokenizer fingerprint>.tokens``, one file per shard
and tokenizer. A file holds an 8-byte magic, the JSON header's length (8 bytes, little
endian), the JSON header, zero padding to a multiple of 8, the int64 document offsets
(documents + 1, shard order: row group after row group) and the token ids (uint16 when the
vocabulary fits, else uint32). The header names what the ids are valid for: the shard (file
name, size, mtime), the tokenizer (fingerprint, vocabulary size) and the rows of every row
group, plus a digest of both arrays. Files are written atomically; a reader checks all of it
against the shard and tokenizer in hand and treats any mismatch as no cache, so a stale,
foreign, truncated or corrupt file never yields tokens. Direction is applied later, by
:mod:`backlm.direction`: the cache holds reading order only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from backlm.atomic import atomic_path
from backlm.callbacks import Progress
from backlm.data.shards import open_shard, read_row_group
from backlm.errors import UserError

TOKENS_DIR = "tokens"
SUFFIX = ".tokens"
MAGIC = b"BLMTOKS\n"
FORMAT_VERSION = 1
LAZY_MAX_BYTES = 64 * 1024 * 1024  # train shards above this are tokenized on the fly instead
_ENCODE_DOCS = 8192  # documents per tokenizer call while writing


@dataclass(frozen=True)
class ShardTokens:
    """The checked token ids of one shard, memory-mapped (read-only views)."""

    tokens: np.ndarray  # every document's ids, reading order, back to back
    offsets: np.ndarray  # int64: document d is tokens[offsets[d]:offsets[d + 1]]
    group_starts: np.ndarray  # int64: the first document of each row group (and the count)

    def doc(self, group: int, row: int) -> np.ndarray:
        """Token ids of row ``row`` of row group ``group``."""
        d = self.group_starts[group] + row
        return self.tokens[self.offsets[d] : self.offsets[d + 1]]


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A digest of everything that decides a tokenizer's ids; None when it cannot be told
    (such a tokenizer never uses the cache)."""
    given = getattr(tokenizer, "fingerprint", None)
    if isinstance(given, str) and given:
        return given
    if not callable(getattr(tokenizer, "to_dict", None)):
        return None
    text = json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def cache_path(shard: str | Path, fingerprint: str) -> Path:
    """Where the ids of ``shard`` under the tokenizer ``fingerprint`` are kept."""
    shard = Path(shard)
    return shard.parent / TOKENS_DIR / f"{shard.stem}.{fingerprint[:16]}{SUFFIX}"


def _group_rows(pf: pq.ParquetFile) -> list[int]:
    return [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _digest(offsets: np.ndarray, tokens: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(memoryview(offsets).cast("B"))
    h.update(memoryview(np.ascontiguousarray(tokens)).cast("B"))
    return h.hexdigest()


def _shard_stamp(shard: Path) -> dict[str, Any]:
    st = shard.stat()
    return {"shard": shard.name, "shard_size": st.st_size, "shard_mtime_ns": st.st_mtime_ns}


def write_tokens(shard: str | Path, tokenizer: Any, threads: int = 2,
                 pf: pq.ParquetFile | None = None) -> Path:
    """Tokenize every document of ``shard`` and atomically write its cache file; its path."""
    shard = Path(shard)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        raise ValueError("this tokenizer has no fingerprint: its ids cannot be cached")
    stamp = _shard_stamp(shard)  # before reading: a shard changed meanwhile reads as stale
    pf = pf or open_shard(shard)
    rows = _group_rows(pf)
    texts = (t for g in range(pf.num_row_groups) for t in read_row_group(pf, g, shard))
    lengths: list[int] = []
    parts: list[np.ndarray] = []
    dtype = _dtype(tokenizer.vocab_size)
    while batch := list(itertools.islice(texts, _ENCODE_DOCS)):
        ids = tokenizer.encode_batch(batch, threads)
        lengths += (len(x) for x in ids)
        parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype,
                                 count=sum(len(x) for x in ids)))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    header = {"format": "backlm-tokens", "version": FORMAT_VERSION, **stamp,
              "tokenizer": fingerprint, "vocab_size": tokenizer.vocab_size,
              "dtype": dtype.name, "row_groups": rows, "tokens": len(tokens),
              "digest": _digest(offsets, tokens)}
    head = json.dumps(header).encode("utf-8")
    head += b" " * (-(len(MAGIC) + 8 + len(head)) % 8)
    path = cache_path(shard, fingerprint)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        f.write(offsets.astype("<i8").tobytes())
        f.write(tokens.astype(dtype.newbyteorder("<")).tobytes())
    return path


class _Bad(Exception):
    """Why a cache file cannot be used."""


def open_tokens(shard: str | Path, tokenizer: Any,
                pf: pq.ParquetFile | None = None) -> tuple[ShardTokens | None, str | None]:
    """The cached ids of ``shard`` when a valid cache file exists for this tokenizer, else
    None, with one line saying why when a file exists but cannot be used."""
    shard = Path(shard)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return None, None
    path = cache_path(shard, fingerprint)
    if not path.is_file():
        return None, None
    try:
        rows = _group_rows(pf or open_shard(shard))
        return _check(path, shard, fingerprint, tokenizer.vocab_size, rows), None
    except _Bad as exc:
        return None, f"ignoring token cache {path}: {exc}"
    except Exception as exc:  # an unreadable cache is never worth a crash: tokenize instead
        return None, f"ignoring token cache {path}: unreadable ({type(exc).__name__})"


def _check(path: Path, shard: Path, fingerprint: str, vocab_size: int,
           rows: list[int]) -> ShardTokens:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(MAGIC) + 8:
            raise _Bad("truncated")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buf[: len(MAGIC)] != MAGIC:
        raise _Bad("not a backlm token cache")
    n = int.from_bytes(buf[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8 + n
    if start > size:
        raise _Bad("truncated")
    try:
        head = json.loads(bytes(buf[len(MAGIC) + 8 : start]))
        if not isinstance(head, dict):
            raise ValueError
        version, dtype = head.get("version"), np.dtype(head.get("dtype"))
    except (ValueError, TypeError):
        raise _Bad("corrupt header") from None
    if head.get("format") != "backlm-tokens" or version != FORMAT_VERSION:
        raise _Bad(f"written by another backlm (format version {version!r})")
    if head.get("tokenizer") != fingerprint or head.get("vocab_size") != vocab_size:
        raise _Bad("written for another tokenizer")
    if {k: head.get(k) for k in ("shard", "shard_size", "shard_mtime_ns")} != _shard_stamp(shard):
        raise _Bad(f"stale ({shard.name} changed since it was written)")
    if head.get("row_groups") != rows or dtype != _dtype(vocab_size):
        raise _Bad(f"does not match the row groups of {shard.name}")
    docs, count = sum(rows), head.get("tokens")
    if not isinstance(count, int) or size != start + 8 * (docs + 1) + dtype.itemsize * count:
        raise _Bad("truncated or overlong")
    offsets = np.frombuffer(buf, dtype="<i8", count=docs + 1, offset=start)
    tokens = np.frombuffer(buf, dtype=dtype.newbyteorder("<"), count=count,
                           offset=start + 8 * (docs + 1))
    if _digest(offsets, tokens) != head.get("digest"):
        raise _Bad("corrupt (digest mismatch)")
    if offsets[0] != 0 or offsets[-1] != count or (np.diff(offsets) < 0).any():
        raise _Bad("corrupt offsets")
    if count and int(tokens.max()) >= vocab_size:
        raise _Bad("holds ids beyond the vocabulary")
    starts = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(rows, out=starts[1:])
    return ShardTokens(tokens=tokens, offsets=offsets, group_starts=starts)


def open_all(shards: Sequence[Path], files: Sequence[pq.ParquetFile],
             tokenizer: Any) -> tuple[list[ShardTokens | None], list[str]]:
    """:func:`open_tokens` for every shard: the caches (None where missing or unusable) and
    one line per unusable file."""
    caches, notes = [], []
    for shard, pf in zip(shards, files, strict=True):
        cache, note = open_tokens(shard, tokenizer, pf)
        caches.append(cache)
        notes += [note] if note else []
    return caches, notes


def ensure_tokens(shards: Sequence[str | Path], tokenizer: Any, threads: int = 2,
                  progress: Progress | None = None) -> tuple[int, list[str]]:
    """Write the cache of every shard that lacks a valid one: (files written, one line per
    unusable file that was replaced), each shard told to ``progress`` as ``cache``. Nothing
    happens for a tokenizer without fingerprint."""
    if tokenizer_fingerprint(tokenizer) is None:
        return 0, []
    written, notes = 0, []
    for i, shard in enumerate(shards):
        pf = open_shard(shard)
        cache, note = open_tokens(shard, tokenizer, pf)
        if cache is None:
            write_tokens(shard, tokenizer, threads, pf)
            written += 1
            if note:
                notes.append(note.replace("ignoring", "rebuilt", 1))
        if progress:
            progress("cache", i + 1, len(shards))
    return written, notes


def cached_tokens(shards: Sequence[str | Path], tokenizer: Any) -> int | None:
    """Tokens in the valid caches of ``shards``; None unless every shard has one."""
    total = 0
    for shard in shards:
        cache, _ = open_tokens(shard, tokenizer)
        if cache is None:
            return None
        total += len(cache.tokens)
    return total


def cache_for_training(shards: Sequence[Path], tokenizer: Any, threads: int = 2,
                       say: Callable[[str], None] = lambda text: None,
                       max_bytes: int = LAZY_MAX_BYTES) -> int:
    """Before a run reads ``shards``: write the token caches that are missing or stale when
    the shards total at most ``max_bytes`` (larger sets are tokenized on the fly; ``backlm
    data prepare --dataset`` caches them). Never fails: a cache that cannot be written only
    costs speed. Returns the files written."""
    try:
        if sum(Path(p).stat().st_size for p in shards) > max_bytes:
            return 0
        written, notes = ensure_tokens(shards, tokenizer, threads)
    except (OSError, ValueError, UserError) as exc:
        say(f"token cache not written ({_first_line(exc)}): tokenizing while training")
        return 0
    for note in notes:
        say(note)
    if written > len(notes):
        say(f"tokenized {written} train shard(s) once into {Path(shards[0]).parent / TOKENS_DIR}")
    return written


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
