"""Advice is tested: an error that tells the user to run a command names one that helps. Each
test provokes the error, runs the suggested command (after the fix the message names), and
checks that it gets past that error."""

from __future__ import annotations

import re

import pytest

from tests.helpers import assert_user_error, run_cli, tiny_args


def suggested(line: str) -> list[str]:
    """The backlm commands a message suggests, as argument lists (``backlm`` left off)."""
    return [c.split()[1:] for c in re.findall(r"`(backlm [^`]+)`", line)]


@pytest.mark.slow  # trains twice (~15 s)
def test_a_full_disk_at_the_first_checkpoint_advises_running_the_command_again(
        home, monkeypatch):
    from backlm.experiment import weights
    from tests.helpers import fail_optimizer_write

    real = weights.write
    fail_optimizer_write(monkeypatch)
    args = tiny_args("--direction", "forward", "--id", "first", steps=2)
    res = run_cli(args)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    line = res.stderr.strip()
    for fragment in ("no space left on device", "has no checkpoint yet", "so it is removed",
                     "run the same command again"):
        assert fragment in line, line
    assert "--resume" not in line and suggested(line) == []
    assert not (home / "exps" / "first").exists()  # removed: a resume could not find it
    assert_user_error(run_cli(["train", "--resume", "first"]), "first")
    monkeypatch.setattr(weights, "write", real)  # space freed: the same command now works
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    assert (home / "exps" / "first" / "checkpoints").is_dir()


def _one_line(res) -> str:
    """The single ``error:`` line of a refused command (exit code 2)."""
    lines = [x for x in (res.stderr or "").strip().splitlines() if x.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("damage", ["unreadable", "another tokenizer"])
def test_a_damaged_experiment_tokenizer_gives_only_the_advice_that_helps(
        lineage, phase_world, tmp_path, damage):
    import shutil

    from backlm.tokenizer import TOKENIZER_FILE, Tokenizer
    from tests.conftest import make_docs

    tok = lineage / "b0" / "tokenizer" / TOKENIZER_FILE
    if damage == "unreadable":
        tok.write_text("{")
    else:
        Tokenizer.train(make_docs(50, seed=3), vocab_size=300).save(tok.parent)
    args = ["export", "b0", "--format", "hf", str(tmp_path / "out"), "--step", "latest"]
    line = _one_line(run_cli(args))
    # the dataset advice (rebuild or delete the dataset's tokenizer) does not mend the
    # experiment's copy, so it is not given
    assert "restore the experiment's own tokenizer/ folder" in line, line
    assert "data prepare" not in line and "delete it" not in line and suggested(line) == []
    shutil.copy(phase_world / "exps" / "b0" / "tokenizer" / TOKENIZER_FILE, tok)  # the fix
    res = run_cli(args)
    assert res.exit_code == 0, res.output


def test_an_unreadable_dataset_tokenizer_is_rebuilt_by_the_next_train(home):
    """Its advice: delete it, and the next train on that dataset trains a new one."""
    from backlm.config import RunConfig, load_config
    from backlm.data.vocab import dataset_tokenizer
    from backlm.tokenizer import TOKENIZER_FILE
    from backlm.train.plan import plan_new_run
    from tests.helpers import TINY

    tok = home / "home" / "data" / "tiny" / "tokenizer" / TOKENIZER_FILE
    tok.write_text("not json")
    line = _one_line(run_cli(tiny_args("--id", "t", steps=1)))
    assert f"tokenizer file {tok} is unreadable" in line and "delete it" in line, line
    assert "data prepare" not in line and not (home / "exps" / "t").exists()
    tok.unlink()  # the advice; what `backlm train` does next, without training:
    cfg = load_config(RunConfig, overrides=[*TINY, "id=t"], flags={})
    plan_new_run(cfg, home / "exps")
    assert dataset_tokenizer(tok.parent.parent, vocab_size=300).vocab_size == 300
    assert tok.is_file()


def test_missing_task_data_names_the_download_that_fetches_it(lineage, tmp_path, monkeypatch,
                                                              mirror):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))  # no task data here
    args = ["eval", "b0", "--tasks", "arc-easy", "--max-per-task", "2", "--device", "cpu"]
    line = _one_line(run_cli(args))
    assert "not downloaded" in line and suggested(line) == [["data", "download", "--task",
                                                             "arc"]], line
    # the suggested command, from a local mirror instead of the network
    res = run_cli([*suggested(line)[0], "--base-url", mirror])
    assert res.exit_code == 0, res.output
    res = run_cli(args)
    assert "not downloaded" not in res.output and res.exit_code == 0, res.output


def test_a_missing_dataset_names_the_commands_that_fill_that_dataset(home, tmp_path):
    from backlm.config import RunConfig, load_config
    from backlm.train.plan import plan_new_run
    from tests.conftest import make_docs
    from tests.helpers import TINY

    line = _one_line(run_cli(tiny_args("--set", "data.dataset=mine", "--id", "m", steps=1)))
    commands = suggested(line)
    assert commands == [["data", "import", "FILE...", "--dataset", "mine"],
                        ["data", "download", "--dataset", "mine"]], line
    text = tmp_path / "mine.txt"
    text.write_text("\n\n".join(make_docs(200)))
    res = run_cli([x if x != "FILE..." else str(text) for x in commands[0]]
                  + ["--split-paragraphs"])
    assert res.exit_code == 0, res.output
    # the train now gets past the missing data (planned, not trained: that is the slow part)
    cfg = load_config(RunConfig, overrides=[*TINY, "data.dataset=mine", "id=m"], flags={})
    assert plan_new_run(cfg, home / "exps").exp_id == "m"
