"""Named datasets: shard-set downloads against a local server that drops connections and
serves HTML, reruns with other shard counts, task sets and the registry."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from backlm.cli import app
from backlm.data.datasets import DATASETS, download_dataset, download_task, task_members
from backlm.data.shards import iter_texts, list_shards, write_shard
from backlm.errors import UserError
from tests.helpers import DOWNLOAD_FAST as FAST
from tests.helpers import assert_user_error
from tests.helpers import serve_shards as _serve_shards


def test_download_dataset_names_train_and_val(tmp_path, server):
    shards = _serve_shards(tmp_path, server, 4)
    out = tmp_path / "data" / "fw"
    summary = download_dataset("fineweb-edu", out, 3, base_url=server.url, **FAST)
    assert [p.name for p in summary.train] == ["train_00000.parquet", "train_00001.parquet"]
    assert [p.name for p in summary.val] == ["val_00000.parquet"]
    assert (out / "train_00000.parquet").read_bytes() == shards[0]
    assert (out / "train_00001.parquet").read_bytes() == shards[1]
    assert (out / "val_00000.parquet").read_bytes() == shards[2]
    assert len(list_shards(out, "train")) == 2 and len(list_shards(out, "val")) == 1
    assert summary.downloaded == 3 and summary.bytes == sum(map(len, shards[:3]))
    assert sorted(p.name for p in out.iterdir()) == [
        "download.json", "train_00000.parquet", "train_00001.parquet", "val_00000.parquet"]
    assert next(iter_texts(out / "val_00000.parquet")).startswith("shard 2 ")

    server.requests.clear()
    again = download_dataset("fineweb-edu", out, 3, base_url=server.url, **FAST)
    assert again.skipped == 3 and again.downloaded == 0 and server.requests == []


def test_rerun_with_more_shards_keeps_train_and_val_disjoint(tmp_path, server):
    shards = _serve_shards(tmp_path, server, 4)
    out = tmp_path / "fw"
    download_dataset("fineweb-edu", out, 2, base_url=server.url, **FAST)
    assert (out / "val_00000.parquet").read_bytes() == shards[1]
    summary = download_dataset("fineweb-edu", out, 4, base_url=server.url, **FAST)
    assert summary.skipped == 1  # train_00000 stays; shard 1 moves from val to train
    assert (out / "train_00001.parquet").read_bytes() == shards[1]
    assert (out / "val_00000.parquet").read_bytes() == shards[3]
    shrunk = download_dataset("fineweb-edu", out, 2, base_url=server.url, **FAST)
    assert shrunk.removed == 2
    assert sorted(p.name for p in out.glob("*.parquet")) == [
        "train_00000.parquet", "val_00000.parquet"]
    manifest = json.loads((out / "download.json").read_text())
    assert set(manifest["files"]) == {"train_00000.parquet", "val_00000.parquet"}


def test_download_dataset_resumes_after_drop(tmp_path, server):
    shards = _serve_shards(tmp_path, server, 2)
    server.faults["/shard_00001.parquet"] = ["drop"]
    out = tmp_path / "fw"
    download_dataset("fineweb-edu", out, 2, base_url=server.url, workers=2, **FAST)
    assert (out / "val_00000.parquet").read_bytes() == shards[1]
    assert not (out / ".download").exists()


def test_html_payload_is_never_a_shard(tmp_path, server):
    _serve_shards(tmp_path, server, 2)
    server.files["/shard_00000.parquet"] = b"<html><body>Sign in to continue</body></html>"
    out = tmp_path / "fw"
    with pytest.raises(UserError, match="not a parquet shard"):
        download_dataset("fineweb-edu", out, 2, base_url=server.url, workers=1, **FAST)
    assert not (out / "train_00000.parquet").exists()
    assert not list(out.rglob("shard_00000*"))


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(UserError, match="fineweb-edu"):
        download_dataset("nope", tmp_path / "x", 2)


def test_bad_shard_counts(tmp_path):
    with pytest.raises(UserError, match="--shards"):
        download_dataset("fineweb-edu", tmp_path / "x", 1)
    with pytest.raises(UserError, match="--shards"):
        download_dataset("fineweb-edu", tmp_path / "x", 5000)


def test_refuses_folder_with_foreign_shards(tmp_path, server):
    _serve_shards(tmp_path, server, 2)
    out = tmp_path / "mine"
    write_shard(out / "train_00000.parquet", ["my own text"])
    with pytest.raises(UserError, match="not downloaded"):
        download_dataset("fineweb-edu", out, 2, base_url=server.url, **FAST)
    assert next(iter_texts(out / "train_00000.parquet")) == "my own text"
    assert server.requests == []


def test_registry_urls():
    source = DATASETS["fineweb-edu"]
    assert source.url(3).endswith("/resolve/main/shard_00003.parquet")
    assert source.url(3, "http://mirror/x/") == "http://mirror/x/shard_00003.parquet"


def test_download_rejects_a_non_parquet_payload(tmp_path, mirror):
    with pytest.raises(UserError, match="not a parquet file with columns question"):
        download_task("mmlu", tmp_path / "t", base_url=f"{mirror}/html", retries=0)
    assert not list((tmp_path / "t").rglob("*.parquet*"))


def test_task_registry_and_errors(tmp_path):
    assert DATASETS["arc-easy"].url(0) == ("https://huggingface.co/datasets/allenai/ai2_arc/"
                                           "resolve/main/ARC-Easy/test-00000-of-00001.parquet")
    assert DATASETS["gsm8k"].url(0).endswith("/openai/gsm8k/resolve/main/main/"
                                             "test-00000-of-00001.parquet")
    assert DATASETS["mmlu"].url(0).endswith("/cais/mmlu/resolve/main/all/"
                                            "test-00000-of-00001.parquet")
    with pytest.raises(UserError, match="choose one of arc, mmlu, gsm8k"):
        download_task("hellaswag", tmp_path)
    res = CliRunner().invoke(app, ["data", "download", "arc-easy"])
    assert_user_error(res, "--task arc")


def test_task_members():
    assert task_members("arc") == ("arc-easy", "arc-challenge")
    assert task_members("mmlu") == ("mmlu",) and task_members("arc-easy") == ("arc-easy",)
    with pytest.raises(UserError, match="unknown task set 'fineweb-edu'"):
        task_members("fineweb-edu")  # a shard set, not a task set
