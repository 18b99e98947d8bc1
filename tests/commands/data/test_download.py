"""``backlm data download``: shard sets and task sets from a local mirror, and a 404 reported
as one line."""

from __future__ import annotations

from typer.testing import CliRunner

from backlm.cli import app
from backlm.data.datasets import download_task
from backlm.evaluation import tasks
from tests.helpers import assert_user_error
from tests.helpers import serve_shards as _serve_shards


def test_cli_download(tmp_path, server, monkeypatch):
    shards = _serve_shards(tmp_path, server, 2)
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["data", "download", "fineweb-edu", "--shards", "2", "--base-url", server.url])
    assert result.exit_code == 0, result.output
    out = tmp_path / "home" / "data" / "fineweb-edu"
    assert (out / "train_00000.parquet").read_bytes() == shards[0]
    assert (out / "val_00000.parquet").read_bytes() == shards[1]


def test_cli_download_404_is_one_line(tmp_path, server, monkeypatch):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["data", "download", "fineweb-edu", "--shards", "2", "--base-url", server.url])
    assert_user_error(result, "HTTP 404")
    assert not list((tmp_path / "home" / "data" / "fineweb-edu").glob("*.parquet"))


def test_cli_download_task_then_load(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(app, ["data", "download", "--task", "arc", "--base-url", mirror])
    assert res.exit_code == 0, res.output
    got = tmp_path / "home" / "data" / "tasks"
    assert (got / "arc-easy" / "test-00000-of-00001.parquet").is_file()
    assert [e.id for e in tasks.load_task("arc-challenge")] == ["Chal_1"]
    again = download_task("arc", got, base_url=mirror)
    assert again.skipped == 2 and again.downloaded == 0
    for name in ("mmlu", "gsm8k"):
        res = CliRunner().invoke(app, ["data", "download", "--task", name, "--base-url", mirror])
        assert res.exit_code == 0, res.output
    assert len(tasks.load_task("gsm8k")) == 2


def _serve_chat(tmp_path, server, val_columns=("messages",)):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from backlm.data.chat import write_chat_shard
    from backlm.data.datasets import DATASETS

    source = DATASETS["smoltalk"]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    for name in (source.filename(0), source.filename(1), source.val_file):
        path = tmp_path / "mirror" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == source.val_file and "messages" not in val_columns:
            pq.write_table(pa.table({c: ["x"] for c in val_columns}), path)
        else:
            write_chat_shard(path, [msgs])
        server.files[f"/{name}"] = path.read_bytes()


def test_cli_download_smoltalk(tmp_path, server, monkeypatch):
    _serve_chat(tmp_path, server)
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["data", "download", "--task", "smoltalk", "--base-url", server.url])
    assert result.exit_code == 0, result.output
    out = tmp_path / "home" / "data" / "smoltalk"
    assert sorted(p.name for p in out.glob("*.parquet")) == ["train_00000.parquet",
                                                             "val_00000.parquet"]
    result = CliRunner().invoke(app, ["data", "download", "--task", "smoltalk", "--shards", "2",
                                      "--base-url", server.url])
    assert result.exit_code == 0 and "1 fetched" in result.output, result.output
    assert (out / "train_00001.parquet").is_file()


def test_cli_download_smoltalk_without_messages_is_one_line(tmp_path, server, monkeypatch):
    _serve_chat(tmp_path, server, val_columns=("text",))
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["data", "download", "--task", "smoltalk", "--base-url", server.url])
    assert_user_error(result, "`messages` column")
    assert not (tmp_path / "home" / "data" / "smoltalk" / "val_00000.parquet").exists()
    bad = CliRunner().invoke(app, ["data", "download", "--task", "smoltalk", "--shards", "9"])
    assert_user_error(bad, "--shards must be between 1 and 4")
