"""The embedded docstring corpus behind ``backlm data prepare``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from backlm.data import corpus
from backlm.data.corpus import (
    ood_docs,
    prepare_corpus,
    source_files,
    split_docs,
)
from backlm.errors import UserError
from tests.helpers import SHARED


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))


def _texts(directory: Path, split: str) -> list[str]:
    out: list[str] = []
    for path in sorted(directory.glob(f"{split}_*.parquet")):
        table = pq.read_table(path)
        assert table.column_names == ["text"]
        out += table.column("text").to_pylist()
    return out


def _prepare(fake_site: Path, topics: Path, name: str = "fake", **kw: object):
    from backlm.paths import dataset_dir

    return prepare_corpus(dataset_dir(name), vocab_size=300, roots=[fake_site],
                          ood_source=topics, **kw)


def test_source_files_order_and_skips(fake_site: Path) -> None:
    files = source_files([fake_site, fake_site / "gen"])  # overlapping roots: listed once
    rel = [str(p.relative_to(fake_site)) for p in files]
    assert len(rel) == len(set(rel))
    assert not any("tests" in r for r in rel)
    assert rel == sorted(rel, key=lambda r: r.split("/"))


def test_split_is_deterministic_and_about_one_percent() -> None:
    docs = [f"document {i} " * 3 for i in range(5000)]
    train, val = split_docs(docs)
    assert (train, val) == split_docs(list(reversed(docs)))  # order-independent too
    assert set(train) | set(val) == set(docs) and not set(train) & set(val)
    assert 15 <= len(val) <= 100
    assert split_docs(["a", "b"])[1] != []  # tiny corpora still get a val document


def test_ood_docs(topics: Path, tmp_path: Path) -> None:
    docs = ood_docs(topics)
    assert len(docs) == 2 and docs[0].startswith("The assert statement.")
    bad = tmp_path / "bad_topics.py"
    bad.write_text("other = {}\n")
    with pytest.raises(UserError, match="topics"):
        ood_docs(bad)


# --- prepare ----------------------------------------------------------------------------------


def test_prepare_builds_dataset(fake_site: Path, topics: Path, tmp_path: Path) -> None:
    summary = _prepare(fake_site, topics, workers=1)
    d = summary.path
    assert d == tmp_path / "home" / "data" / "fake" and not summary.existed
    train, val, ood = _texts(d, "train"), _texts(d, "val"), _texts(d, "ood")
    everything = train + val
    assert len(everything) == len(set(everything)) == 40 * 2 + 5 + 1 + 2
    assert everything.count(SHARED) == 1
    skipped = ("Not a docstring", "Test-folder", "Too short", "Broken file")
    assert not any(t.startswith(skipped) for t in everything)
    assert any(t.startswith("Module that must never be imported") for t in everything)
    assert not (tmp_path / "imported.txt").exists()
    assert val and len(ood) == 2
    assert (d / "tokenizer" / "backlm_tokenizer.json").is_file()
    assert summary.splits["train"].documents == len(train)
    assert summary.splits["val"].characters == sum(map(len, val))
    assert all(s.tokens > 0 and s.shards == 1 for s in summary.splits.values())
    assert summary.vocab_size <= 300
    saved = json.loads((d / corpus.SUMMARY_FILE).read_text())
    assert saved["splits"]["train"]["documents"] == len(train)
    assert not list(d.parent.glob(".fake.*"))  # no partial folder left behind
    # the train split's token cache, valid after the partial folder was renamed into place
    from backlm.data.token_cache import cached_tokens
    from backlm.tokenizer import Tokenizer

    tok = Tokenizer.load(d / "tokenizer")
    shards = sorted(d.glob("train_*.parquet"))
    assert len(list((d / "tokens").glob("train_00000.*.tokens"))) == 1
    assert cached_tokens(shards, tok) == summary.splits["train"].tokens == sum(
        len(tok.encode(t)) for t in train)


def test_prepare_is_deterministic(fake_site: Path, topics: Path) -> None:
    a = _prepare(fake_site, topics, name="a", workers=1).path
    b = _prepare(fake_site, topics, name="b", workers=2).path
    for split in ("train", "val", "ood"):
        assert _texts(a, split) == _texts(b, split)
    tok = "tokenizer/backlm_tokenizer.json"
    assert (a / tok).read_text() == (b / tok).read_text()


def test_existing_dataset_is_left_alone(fake_site: Path, topics: Path) -> None:
    first = _prepare(fake_site, topics, workers=1)
    shard = first.path / "train_00000.parquet"
    stamp = shard.stat().st_mtime_ns
    again = _prepare(fake_site, topics, workers=1)
    assert again.existed and shard.stat().st_mtime_ns == stamp
    assert again.splits["train"].documents == first.splits["train"].documents
    assert not again.notes  # its token cache is valid: nothing written
    shutil.rmtree(first.path / "tokens")  # prepared before the cache existed: it is added
    cached = _prepare(fake_site, topics, workers=1)
    assert cached.existed and shard.stat().st_mtime_ns == stamp
    assert len(cached.notes) == 1 and cached.notes[0].startswith("wrote the token cache of 1")
    assert len(list((first.path / "tokens").glob("*.tokens"))) == 1
    rebuilt = _prepare(fake_site, topics, workers=1, force=True)
    assert not rebuilt.existed and shard.stat().st_mtime_ns != stamp


def test_interrupted_prepare_leaves_nothing(
    fake_site: Path, topics: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    first = _prepare(fake_site, topics, workers=1)
    before = _texts(first.path, "train")
    monkeypatch.setattr("backlm.data.vocab.dataset_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(fake_site, topics, name="other", workers=1)
    with pytest.raises(KeyboardInterrupt):
        _prepare(fake_site, topics, workers=1, force=True)
    data = first.path.parent
    assert not (data / "other").exists()
    assert _texts(first.path, "train") == before  # a failed --force keeps the old dataset
    assert sorted(p.name for p in data.iterdir()) == ["fake"]


def test_stale_partial_is_removed(fake_site: Path, topics: Path, tmp_path: Path) -> None:
    stale = tmp_path / "home" / "data" / ".fake.partial-999999999"
    stale.mkdir(parents=True)
    _prepare(fake_site, topics, workers=1)
    assert not stale.exists()


def test_dataset_swapped_out_by_a_killed_run_comes_back(
    fake_site: Path, topics: Path, tmp_path: Path
) -> None:
    first = _prepare(fake_site, topics, workers=1)
    old = first.path.parent / ".fake.old-999999999"
    first.path.rename(old)  # as if killed between the two renames of a --force rebuild
    again = _prepare(fake_site, topics, workers=1)
    assert again.existed and not old.exists()
    assert again.splits["train"].documents == first.splits["train"].documents
    assert not again.notes  # renamed back: its token cache is still valid


def test_no_sources_is_user_error(tmp_path: Path, topics: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no docstrings"):
        _prepare(tmp_path / "empty", topics, workers=1)


@pytest.mark.slow
def test_real_installation_corpus(tmp_path: Path) -> None:
    t0 = time.monotonic()
    summary = prepare_corpus(tmp_path / "home" / "data" / "pydocs", workers=2)
    seconds = time.monotonic() - t0
    assert summary.splits["train"].bytes + summary.splits["val"].bytes >= 10_000_000
    assert summary.splits["val"].documents > 0 and summary.splits["ood"].documents > 0
    assert summary.vocab_size == 8192
    assert seconds < 120
