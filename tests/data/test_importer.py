"""Importing the user's txt/jsonl/parquet: validated first, written all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backlm.data.importer import collect_files, doc_hash, import_files
from backlm.data.shards import list_shards, write_shard
from backlm.errors import UserError
from tests.helpers import all_texts as _all_texts
from tests.helpers import split_texts as _texts
from tests.helpers import write_jsonl as _jsonl


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (empty when root is missing)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_txt_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n\nstill first\n")
    (tmp_path / "b.txt").write_text("second document")
    out = tmp_path / "ds"
    summary = import_files([tmp_path / "a.txt", tmp_path / "b.txt"], out, val_fraction=0.0)
    assert _all_texts(out) == ["first document\n\nstill first", "second document"]
    assert summary.files == 2 and summary.docs == {"train": 2, "val": 0}


def test_txt_split_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n  \nthree\nthree b\n\n\n")
    out = tmp_path / "ds"
    import_files([tmp_path / "a.txt"], out, val_fraction=0.0, split_paragraphs=True)
    assert _all_texts(out) == ["one", "three\nthree b", "two"]


def test_jsonl_skips_blank_lines_and_custom_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "alpha"}\n\n   \n{"body": "beta", "x": 1}\n{"body": ""}\n')
    out = tmp_path / "ds"
    summary = import_files([path], out, val_fraction=0.0, text_field="body")
    assert _all_texts(out) == ["alpha", "beta"]
    assert summary.docs["train"] == 2


def test_parquet_and_directory_recursion(tmp_path):
    src = tmp_path / "src"
    write_shard(src / "nested" / "p.parquet", ["from parquet 1", "from parquet 2"])
    (src / "t.txt").write_text("from txt")
    _jsonl(src / "deep" / "er" / "j.jsonl", [{"text": "from jsonl"}])
    (src / "notes.md").write_text("ignored")
    (src / ".hidden").mkdir()
    (src / ".hidden" / "h.txt").write_text("hidden is skipped")
    out = tmp_path / "ds"
    summary = import_files([src], out, val_fraction=0.0)
    assert _all_texts(out) == ["from jsonl", "from parquet 1", "from parquet 2", "from txt"]
    assert summary.files == 3 and summary.skipped_files == 1


def test_split_is_deterministic_by_hash_and_val_never_empty(tmp_path):
    docs = [{"text": f"document number {i}"} for i in range(400)]
    out = tmp_path / "ds"
    summary = import_files([_jsonl(tmp_path / "d.jsonl", docs)], out, val_fraction=0.1)
    val = _texts(out, "val")
    assert set(val) == {d["text"] for d in docs if doc_hash(d["text"]) < 0.1}
    assert 10 < len(val) < 80 and summary.docs["val"] == len(val)
    # Three documents at 1%: the hash split would leave val empty, so the lowest hash moves.
    small = tmp_path / "small"
    texts = ["a small one", "another one", "a third one"]
    import_files([_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in texts])], small)
    assert _texts(small, "val") == [min(texts, key=doc_hash)]
    assert len(list_shards(small, "train")) == 1


def test_existing_dataset_refused_unless_append(tmp_path):
    out = tmp_path / "ds"
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_text("second")
    import_files([tmp_path / "a.txt"], out, val_fraction=0.0)
    before = _snapshot(out)
    with pytest.raises(UserError, match="--append"):
        import_files([tmp_path / "b.txt"], out, val_fraction=0.0)
    assert _snapshot(out) == before
    summary = import_files([tmp_path / "b.txt"], out, val_fraction=0.0, append=True)
    assert [p.name for p in summary.shards] == ["train_00001.parquet"]
    assert all(_snapshot(out)[name] == data for name, data in before.items())
    assert _all_texts(out) == ["first", "second"]


def test_many_shards_by_size(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i} " + "x" * 100} for i in range(50)])
    summary = import_files([path], tmp_path / "ds", val_fraction=0.0, shard_chars=1000)
    assert len(summary.shards) > 3
    assert len(_all_texts(tmp_path / "ds")) == 50


def _assert_untouched(out: Path, before: dict[str, bytes]) -> None:
    assert _snapshot(out) == before
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("existing", [False, True])
def test_bad_json_line_names_file_and_line(tmp_path, existing):
    out = tmp_path / "data" / "ds"
    out.parent.mkdir(parents=True)
    if existing:
        write_shard(out / "train_00000.parquet", ["kept as is"])
    before = _snapshot(out)
    good = _jsonl(tmp_path / "good.jsonl", [{"text": "fine"}] * 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:3: not valid JSON") as err:
        import_files([good, bad], out, append=existing)
    assert "\n" not in str(err.value)
    _assert_untouched(out, before)
    assert out.exists() == existing


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nofield.jsonl", b'{"text": "a"}\n{"body": "b"}\n', r"nofield\.jsonl:2: no 'text' field"),
        ("list.jsonl", b'["text"]\n', r"list\.jsonl:1: expected a JSON object"),
        ("number.jsonl", b'{"text": 3}\n', r"number\.jsonl:1: field 'text' must be a string"),
        ("latin.txt", "caf\u00e9".encode("latin-1"), r"latin\.txt: not valid UTF-8 \(byte 0xe9 at position 3\)"),
        ("random.parquet", os.urandom(300), r"cannot read .*random\.parquet as parquet"),
        ("empty.parquet", b"", r"cannot read .*empty\.parquet as parquet"),
        ("doc.csv", b"text\nhello\n", r"unsupported file type '\.csv'"),
    ],
)
def test_bad_input_leaves_nothing(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    good = tmp_path / "good.txt"
    good.write_text("valid document")
    out = tmp_path / "data" / "ds"
    with pytest.raises(UserError, match=message):
        import_files([good, path], out)
    assert not out.exists()
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_parquet_without_text_column(tmp_path):
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"content": ["a"], "id": [1]}), path)
    with pytest.raises(UserError, match=r"no 'text' column \(columns: content, id\)"):
        import_files([path], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    import_files([path], tmp_path / "ds", text_field="content", val_fraction=0.0)
    assert _all_texts(tmp_path / "ds") == ["a"]


def test_parquet_with_non_string_text(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(UserError, match="must hold strings"):
        import_files([path], tmp_path / "ds")


def test_empty_input(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\n")
    _jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(UserError, match="no documents"):
        import_files([tmp_path / "blank.txt", tmp_path / "e.jsonl"], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no .txt, .jsonl or .parquet files"):
        collect_files([tmp_path / "empty_dir"])
    with pytest.raises(UserError, match="no such file or folder"):
        collect_files([tmp_path / "missing.txt"])
    with pytest.raises(UserError, match="val-fraction"):
        import_files([tmp_path / "blank.txt"], tmp_path / "ds", val_fraction=1.0)
