"""Parquet shards with a ``text`` column: written atomically, read back row group by row group,
rolled by size, listed per split, and bad files reported as user errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backlm.data import shards
from backlm.data.shards import (
    ShardWriter,
    iter_texts,
    list_shards,
    open_shard,
    read_row_group,
    shard_name,
    write_shard,
)
from backlm.errors import UserError


def test_texts_round_trip_across_row_groups(tmp_path):
    texts = [f"doc {i} ✓" for i in range(25)] + [""]
    path = tmp_path / "train_00000.parquet"
    write_shard(path, texts, row_group_docs=10)
    pf = open_shard(path)
    assert pf.num_row_groups == 3 and pf.schema_arrow.names == ["text"]
    assert list(iter_texts(path)) == texts
    assert read_row_group(pf, 2, path) == texts[20:]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_a_failed_write_keeps_the_old_shard(tmp_path, monkeypatch):
    path = tmp_path / "train_00000.parquet"
    write_shard(path, ["old"])

    def half_written(table, where, **kw):
        Path(where).write_bytes(b"PAR1 and then the disk was full")
        raise OSError("disk full")

    monkeypatch.setattr(shards.pq, "write_table", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, ["new"])
    monkeypatch.undo()
    assert list(iter_texts(path)) == ["old"] and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_nulls_read_as_empty_strings_and_large_strings_are_text(tmp_path):
    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "a.parquet")
    assert list(iter_texts(tmp_path / "a.parquet")) == ["a", "", "c"]
    pq.write_table(pa.table({"text": pa.array(["big"], type=pa.large_string())}),
                   tmp_path / "b.parquet")
    assert list(iter_texts(tmp_path / "b.parquet")) == ["big"]


def test_shard_writer_rolls_numbered_shards_by_size(tmp_path):
    writer = ShardWriter(tmp_path, "val", shard_chars=10, start=3)
    writer.extend(["aaaa", "bbbbbb", "cc", "dddddddddddd", "e"])
    paths = writer.close()
    assert [p.name for p in paths] == [shard_name("val", i) for i in (3, 4, 5)] == [
        "val_00003.parquet", "val_00004.parquet", "val_00005.parquet"]
    assert [list(iter_texts(p)) for p in paths] == [["aaaa", "bbbbbb"], ["cc", "dddddddddddd"],
                                                   ["e"]]
    assert (writer.docs, writer.chars) == (5, 25)
    assert writer.close() == paths  # nothing queued: no empty shard
    assert ShardWriter(tmp_path / "none", "train").close() == []
    assert not (tmp_path / "none").exists()


def test_list_shards_sorts_one_split(tmp_path):
    for name in ("train_00001", "train_00000", "val_00000", "ood_00000"):
        write_shard(tmp_path / f"{name}.parquet", ["x"])
    (tmp_path / "train_notes.txt").write_text("not a shard")
    assert [p.name for p in list_shards(tmp_path)] == ["train_00000.parquet",
                                                       "train_00001.parquet"]
    assert [p.name for p in list_shards(tmp_path, "ood")] == ["ood_00000.parquet"]
    with pytest.raises(UserError, match="no test shards in"):
        list_shards(tmp_path, "test")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"PAR1 but not parquet"), "cannot read parquet shard"),
    (lambda p: pq.write_table(pa.table({"body": ["x"], "id": [1]}), p),
     r"has no 'text' column \(columns: body, id\)"),
    (lambda p: pq.write_table(pa.table({"text": [1, 2]}), p), "'text' column must hold strings"),
])
def test_bad_shards_are_user_errors(tmp_path, make, message):
    path = tmp_path / "train_00000.parquet"
    make(path)
    with pytest.raises(UserError, match=message):
        list(iter_texts(path))


def test_a_dataset_kind_is_read_from_its_shards(tmp_path):
    from backlm.data.chat import write_chat_shard
    from backlm.data.shards import dataset_kind, require_kind

    text, chat, empty = tmp_path / "text", tmp_path / "chat", tmp_path / "empty"
    shards.write_shard(text / "val_00000.parquet", ["a"])  # old folders: any split says it
    write_chat_shard(chat / "train_00000.parquet",
                     [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    empty.mkdir()
    assert [dataset_kind(f) for f in (text, chat, empty, tmp_path / "nope")] == [
        "text", "chat", None, None]
    require_kind(text, "text", "x")
    require_kind(empty, "chat", "x")  # no shards: whoever reads it says what is missing
    with pytest.raises(UserError, match=r"^dataset 'chat' is a chat dataset .* but a base run "
                                        r"needs a text dataset"):
        require_kind(chat, "text", "a base run")
    with pytest.raises(UserError, match="'text' is a text dataset"):
        require_kind(text, "chat", "chat.dataset")
