"""The pre-tokenized shard cache: the loader's batches are the same with and without it (every
direction, across resume), and a stale, foreign, truncated or corrupt cache is never used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backlm.data import loader as loader_module
from backlm.data import token_cache as tc
from backlm.data.loader import PackedLoader
from backlm.data.shards import iter_texts, list_shards, write_shard
from backlm.direction import Direction
from backlm.tokenizer import Tokenizer
from tests.conftest import ByteTokenizer, make_docs

DIRECTIONS = ["forward", "backward", "bidirectional"]


class WideTokenizer(ByteTokenizer):
    """Ids above 65535 (the cache must store uint32) and a fingerprint of its own."""

    vocab_size = 70_000
    fingerprint = "wide-test-tokenizer"

    def encode(self, text: str) -> list[int]:
        return [65_600 + b for b in text.encode("utf-8")]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(make_docs(600), vocab_size=300)


@pytest.fixture(scope="module")
def cached_ds(tmp_path_factory, tok) -> Path:
    """Two train shards (row groups of 50 and 30 documents, one empty document) with their
    token cache written; read-only for the tests that use it."""
    d = tmp_path_factory.mktemp("cached") / "ds"
    docs = make_docs(420, seed=3)
    docs[7] = ""
    write_shard(d / "train_00000.parquet", docs[:250], row_group_docs=50)
    write_shard(d / "train_00001.parquet", docs[250:], row_group_docs=30)
    written, notes = tc.ensure_tokens(list_shards(d), tok)
    assert (written, notes) == (2, [])
    return d


@pytest.fixture
def ds(tmp_path, tok) -> Path:
    """A private copy of a one-shard dataset with its cache (tests here damage it)."""
    d = tmp_path / "ds"
    write_shard(d / "train_00000.parquet", make_docs(200, seed=5), row_group_docs=40)
    tc.ensure_tokens(list_shards(d), tok)
    return d


def make(ds: Path, tok, direction: str, cached: bool, **kw) -> PackedLoader:
    kw = {"batch_size": 3, "seq_len": 40, "docs_per_batch": 16, "buffer_docs": 8, **kw}
    return PackedLoader(list_shards(ds), tok, Direction.parse(direction), token_cache=cached,
                        **kw)


def batches(ld: PackedLoader, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        try:
            b = ld.next_batch()
        except StopIteration:
            break
        out.append((b.inputs, b.targets))
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


# --- the same batches ------------------------------------------------------------------------


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(direction=st.sampled_from(DIRECTIONS), seed=st.integers(0, 1000),
       batch_size=st.integers(1, 4), seq_len=st.integers(8, 96), stop=st.integers(0, 6),
       world=st.sampled_from([(0, 1), (1, 2), (2, 3)]), loop=st.booleans())
def test_cached_batches_equal_tokenized_batches_across_resume(
    cached_ds, tok, direction, seed, batch_size, seq_len, stop, world, loop
) -> None:
    rank, world_size = world
    kw = {"seed": seed, "batch_size": batch_size, "seq_len": seq_len, "rank": rank,
          "world_size": world_size, "loop": loop}
    cached, plain = make(cached_ds, tok, direction, True, **kw), make(cached_ds, tok, direction,
                                                                      False, **kw)
    assert all(c is not None for c in cached._cache) and not cached.cache_notes
    n = 10 if loop else 10_000
    head_c, head_p = batches(cached, stop), batches(plain, stop)
    assert same(head_c, head_p)
    state = cached.state_dict()
    assert state == plain.state_dict()
    rest = batches(plain, n)
    assert same(batches(cached, n), rest)
    for flag in (True, False):  # resume either way: with and without the cache
        again = make(cached_ds, tok, direction, flag, **kw)
        again.load_state_dict(state)
        assert same(batches(again, n), rest)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_uint32_ids_round_trip(tmp_path, direction) -> None:
    d = tmp_path / "wide"
    write_shard(d / "train_00000.parquet", make_docs(120, seed=1), row_group_docs=25)
    wide = WideTokenizer()
    path = tc.write_tokens(d / "train_00000.parquet", wide)
    assert path == tc.cache_path(d / "train_00000.parquet", wide.fingerprint)
    cache, note = tc.open_tokens(d / "train_00000.parquet", wide)
    assert note is None and cache.tokens.dtype == np.uint32
    assert same(batches(make(d, wide, direction, True), 8),
                batches(make(d, wide, direction, False), 8))


def test_cache_holds_each_document_in_reading_order(cached_ds, tok) -> None:
    shard = list_shards(cached_ds)[1]
    cache, _ = tc.open_tokens(shard, tok)
    assert cache.tokens.dtype == np.uint16
    texts = list(iter_texts(shard))
    assert [cache.doc(i // 30, i % 30).tolist() for i in range(len(texts))] == [
        tok.encode(t) for t in texts]
    assert tc.cached_tokens(list_shards(cached_ds), tok) == sum(
        len(tok.encode(t)) for s in list_shards(cached_ds) for t in iter_texts(s))


def test_cached_loader_reads_no_text(cached_ds, tok, monkeypatch) -> None:
    expected = batches(make(cached_ds, tok, "bidirectional", False), 6)

    def no_reading(*args):
        raise AssertionError("the cached loader read parquet text")

    monkeypatch.setattr(loader_module, "read_row_group", no_reading)
    assert same(batches(make(cached_ds, tok, "bidirectional", True), 6), expected)


def test_tokenizer_without_fingerprint_never_uses_a_cache(cached_ds, byte_tok) -> None:
    assert tc.tokenizer_fingerprint(byte_tok) is None
    assert tc.ensure_tokens(list_shards(cached_ds), byte_tok) == (0, [])
    ld = make(cached_ds, byte_tok, "forward", True)
    assert ld._cache == [None, None] and not ld.cache_notes


# --- bad caches --------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _flip_token(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # a token id changes; the length stays right
    path.write_bytes(bytes(data))


def _garbage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[20:30] = b"\xff" * 10
    path.write_bytes(bytes(data))


def _not_a_cache(path: Path) -> None:
    path.write_bytes(b"hello")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _changed_shard(path: Path) -> None:
    shard = path.parent.parent / "train_00000.parquet"
    write_shard(shard, make_docs(200, seed=6), row_group_docs=40)  # same layout, new texts


def _touched_shard(path: Path) -> None:
    shard = path.parent.parent / "train_00000.parquet"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("damage", [_truncate, _flip_token, _garbage_header, _not_a_cache,
                                    _empty, _changed_shard, _touched_shard])
def test_bad_cache_is_ignored_then_rebuilt(ds, tok, damage) -> None:
    shard = list_shards(ds)[0]
    path = tc.cache_path(shard, tc.tokenizer_fingerprint(tok))
    damage(path)
    expected = batches(make(ds, tok, "backward", False), 8)
    ld = make(ds, tok, "backward", True)
    assert ld._cache == [None]
    assert len(ld.cache_notes) == 1 and "\n" not in ld.cache_notes[0]
    assert ld.cache_notes[0].startswith(f"ignoring token cache {path}")
    assert same(batches(ld, 8), expected)  # tokenized instead: the right tokens
    written, notes = tc.ensure_tokens([shard], tok)
    assert written == 1 and len(notes) == 1 and notes[0].startswith("rebuilt token cache")
    fixed = make(ds, tok, "backward", True)
    assert fixed._cache[0] is not None and not fixed.cache_notes
    assert same(batches(fixed, 8), expected)
    assert not list(path.parent.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_cache_of_another_tokenizer_is_not_used(ds, tok) -> None:
    other = Tokenizer.train(make_docs(300, seed=9), vocab_size=280)
    assert tc.tokenizer_fingerprint(other) != tc.tokenizer_fingerprint(tok)
    shard = list_shards(ds)[0]
    # the other tokenizer's file name holding this tokenizer's ids: the header tells
    shutil.copy(tc.cache_path(shard, tc.tokenizer_fingerprint(tok)),
                tc.cache_path(shard, tc.tokenizer_fingerprint(other)))
    ld = make(ds, other, "forward", True)
    assert ld._cache == [None] and "another tokenizer" in ld.cache_notes[0]
    assert same(batches(ld, 6), batches(make(ds, other, "forward", False), 6))


# --- building it before training ------------------------------------------------------------


def test_cache_for_training_writes_small_sets_only(tmp_path, tok) -> None:
    d = tmp_path / "ds"
    write_shard(d / "train_00000.parquet", make_docs(50), row_group_docs=20)
    shards, said = list_shards(d), []
    assert tc.cache_for_training(shards, tok, say=said.append, max_bytes=10) == 0
    assert not (d / tc.TOKENS_DIR).exists() and said == []
    assert tc.cache_for_training(shards, tok, say=said.append) == 1
    assert len(said) == 1 and "tokenized 1 train shard" in said[0]
    assert tc.cache_for_training(shards, tok, say=said.append) == 0 and len(said) == 1


def test_cache_for_training_survives_an_unwritable_folder(tmp_path, tok, monkeypatch) -> None:
    d = tmp_path / "ds"
    write_shard(d / "train_00000.parquet", make_docs(50), row_group_docs=20)

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tc, "atomic_path", refuse)
    said: list[str] = []
    assert tc.cache_for_training(list_shards(d), tok, say=said.append) == 0
    assert len(said) == 1 and said[0].startswith("token cache not written")
    assert "Permission denied" in said[0]
