"""Loading a checkpoint for inference: which step, which direction, eval mode."""

from __future__ import annotations

import pytest

from backlm.errors import UserError
from backlm.experiment.folder import Experiment
from backlm.experiment.loading import load_model, resolve_step
from tests.helpers import run_cli, tiny_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import make_docs

    root = tmp_path_factory.mktemp("inference")
    with pytest.MonkeyPatch.context() as mp:
        from backlm.data.shards import write_shard
        from backlm.tokenizer import Tokenizer

        mp.setenv("BACKLM_HOME", str(root / "home"))
        mp.setenv("BACKLM_EXPERIMENTS", str(root / "exps"))
        d = root / "home" / "data" / "tiny"
        docs = make_docs(400)
        write_shard(d / "train_00000.parquet", docs[:360])
        write_shard(d / "val_00000.parquet", docs[360:])
        Tokenizer.train(docs, vocab_size=300).save(d / "tokenizer")
        res = run_cli(tiny_args("--direction", "backward", "--id", "inf", steps=8))
        assert res.exit_code == 0, res.output
        yield Experiment(root / "exps" / "inf")


def test_default_step_is_the_best_then_the_latest(trained):
    assert trained.checkpoint_steps() == [1, 4, 8]  # 1: the step-0 best asked for one
    best = trained.best()["step"]
    assert resolve_step(trained, None) == trained.checkpoint_dir(best)
    assert resolve_step(trained, 4) == trained.checkpoint_dir(4)
    with pytest.raises(UserError, match="no checkpoint at step 5 .*1, 4, 8"):
        resolve_step(trained, 5)
    record = trained.best()
    trained.best_path().write_text('{"step": 99}')  # names a step that is gone
    try:
        assert resolve_step(trained, None) == trained.checkpoint_dir(8)
    finally:
        trained.write_best("val", record)


def test_load_model_declares_the_checkpoint_direction(trained):
    lm = load_model(trained, step=4, device="cpu")
    assert lm.step == 4 and lm.direction == "backward" and lm.phase == "base"
    assert not lm.model.training and lm.model.cfg.vocab_size == lm.tokenizer.vocab_size
    assert str(lm.device) == "cpu"


def test_an_experiment_from_before_the_tokenizer_rename_still_loads(trained, tmp_path):
    """Experiments (and datasets) written before keep backlm's tokenizer as tokenizer.json."""
    import shutil

    from backlm.tokenizer import LEGACY_TOKENIZER_FILE, TOKENIZER_FILE

    old = Experiment(shutil.copytree(trained.path, tmp_path / "old"))
    (old.tokenizer_dir / TOKENIZER_FILE).rename(old.tokenizer_dir / LEGACY_TOKENIZER_FILE)
    lm, new = load_model(old, step=4, device="cpu"), load_model(trained, step=4, device="cpu")
    assert lm.tokenizer == new.tokenizer and lm.step == 4


def test_an_experiment_without_checkpoints_cannot_be_loaded(tmp_path):
    exp = Experiment(tmp_path / "empty")
    exp.checkpoints.mkdir(parents=True)
    with pytest.raises(UserError, match="no checkpoint yet"):
        resolve_step(exp, None)
