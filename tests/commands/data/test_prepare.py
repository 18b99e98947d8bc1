"""``backlm data prepare`` from the command line: the summary, an existing dataset left alone,
bad input as a user error."""

from __future__ import annotations

from pathlib import Path

import pytest

from backlm.data import corpus
from tests.helpers import assert_user_error


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))


def test_cli_prepare(fake_site: Path, topics: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from backlm.cli import app

    monkeypatch.setattr(corpus, "default_roots", lambda: [fake_site])
    monkeypatch.setattr(corpus, "default_ood_source", lambda: topics)
    runner = CliRunner()
    args = ["data", "prepare", "--dataset", "cli", "--vocab-size", "300", "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "tokens" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already exists" in again.output
    assert "token cache" not in again.output  # still valid
    # a shard rewritten since: its stale token cache is rebuilt, said in one line
    from backlm.data.shards import iter_texts, write_shard
    from backlm.paths import dataset_dir

    shard = dataset_dir("cli") / "train_00000.parquet"
    write_shard(shard, list(iter_texts(shard))[1:])
    stale = runner.invoke(app, args)
    assert stale.exit_code == 0, stale.output
    lines = [line for line in stale.output.splitlines() if "token cache" in line]
    assert len(lines) == 1 and "rebuilt token cache" in lines[0] and "stale" in lines[0]
    bad = runner.invoke(app, [*args[:-4], "--vocab-size", "10"])
    assert_user_error(bad, "at least")


def test_cli_prepare_chat(fake_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from backlm.cli import app
    from backlm.data.chat import CHAT_DATASET, chat_shards, read_conversations
    from backlm.paths import dataset_dir

    monkeypatch.setattr(corpus, "default_roots", lambda: [fake_site])
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", "--chat", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "conversations" in result.output and "train" in result.output
    folder = dataset_dir(CHAT_DATASET)
    assert read_conversations(chat_shards(folder, "val")[0])
    again = runner.invoke(app, ["data", "prepare", "--chat", "--workers", "1"])
    assert again.exit_code == 0 and "already exists" in again.output
    monkeypatch.setattr(corpus, "default_roots", lambda: [fake_site / "missing"])
    bad = runner.invoke(app, ["data", "prepare", "--chat", "--dataset", "other", "--workers", "1"])
    assert_user_error(bad, "too little documented")
    assert not dataset_dir("other").exists()


@pytest.mark.parametrize("args, shard, words", [
    # the hostile tester's case: pydocs is text, yet --chat reported 45,840 "conversations"
    (["--chat", "--dataset", "pydocs"], "text", "dataset 'pydocs' is a text dataset"),
    (["--chat", "--dataset", "pydocs", "--force"], "text", "is a text dataset"),
    (["--dataset", "pydocs"], "chat", "dataset 'pydocs' is a chat dataset"),
])
def test_prepare_refuses_a_dataset_of_the_other_kind(tmp_path: Path, args, shard, words) -> None:
    from backlm.data.chat import write_chat_shard
    from backlm.data.shards import write_shard
    from backlm.paths import dataset_dir
    from tests.helpers import run_cli

    folder = dataset_dir("pydocs")
    if shard == "text":
        write_shard(folder / "train_00000.parquet", ["a document", "another one"])
    else:
        write_chat_shard(folder / "train_00000.parquet",
                         [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    assert_user_error(run_cli(["data", "prepare", *args]), words, "pydocs")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
