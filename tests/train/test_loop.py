"""The training loop: per-direction evaluation, exact resume after SIGKILL and after Ctrl-C
(also in the middle of a step, and a second Ctrl-C during the checkpoint save); a full disk at
a checkpoint is one line, and what a killed save left is removed on resume."""

from __future__ import annotations

import json

from backlm.callbacks import Callback
from tests.helpers import losses, metrics, run_cli, tiny_args, train_subprocess


def test_bidirectional_logs_per_direction_losses(home):
    res = run_cli(tiny_args("--direction", "bidirectional", "--id", "bi", steps=4))
    assert res.exit_code == 0, res.output
    last = metrics(home / "exps" / "bi")[-1]
    assert {"val_loss_forward", "val_loss_backward", "val_bpb_forward", "val_bpb_backward"} <= set(last)



def test_sigkill_then_resume_reproduces_the_losses(home):
    ref = train_subprocess("ref")
    assert ref.returncode == 0, ref.stderr
    killed = train_subprocess("crash", {"BACKLM_KILL_AT_STEP": "6"})
    assert killed.returncode == -9  # a real SIGKILL between the checkpoints at 4 and 8
    exp = home / "exps" / "crash"
    assert json.loads((exp / "metadata.json").read_text())["status"] == "running"
    assert max(losses(exp)) == 6
    resumed = train_subprocess("crash", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(home / "exps" / "ref"), losses(exp)
    assert sorted(b) == list(range(1, 13))  # steps 5-6 rewritten, none duplicated
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]]



def test_ctrl_c_saves_and_resume_matches(home):
    ref = train_subprocess("ref2")
    assert ref.returncode == 0, ref.stderr
    res = train_subprocess("intr", {"BACKLM_INTERRUPT_AT_STEP": "6"})
    assert res.returncode == 130, res.stderr
    assert "resume" in res.stdout and "Traceback" not in res.stderr
    exp = home / "exps" / "intr"
    assert (exp / "checkpoints" / "step_000006" / "model.safetensors").exists()
    assert json.loads((exp / "training_summary.json").read_text())["stop_reason"] == "interrupted"
    assert json.loads((exp / "metadata.json").read_text())["status"] == "interrupted"
    resumed = train_subprocess("intr", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(home / "exps" / "ref2"), losses(exp)
    assert sorted(b) == list(range(1, 13)) and all(a[s] == b[s] for s in a)
    assert json.loads((exp / "training_summary.json").read_text())["sessions"] == 2


class _InterruptMidStep(Callback):
    """Raises Ctrl-C after the backward pass of step 6, before the optimizer step."""

    def on_after_backward(self, state, step):
        if step == 6:
            raise KeyboardInterrupt


def test_ctrl_c_mid_step_rewinds_the_data(home):
    from backlm.experiment.folder import Experiment
    from backlm.train import loop

    assert run_cli(tiny_args("--direction", "forward", "--id", "ref3", steps=10)).exit_code == 0
    assert run_cli(tiny_args("--direction", "forward", "--id", "mid", steps=1)).exit_code == 0
    exp = Experiment(home / "exps" / "mid")
    # Same config as ref3 but stopped by an interrupt inside step 6.
    cfg = (home / "exps" / "ref3" / "config.yaml").read_text().replace("id: ref3", "id: mid")
    exp.config_path.write_text(cfg)
    for p in exp.checkpoints.glob("step_*"):
        import shutil

        shutil.rmtree(p)
    exp.metrics_path.unlink()
    s = loop.run(exp, exp.config(), observers=[_InterruptMidStep()])
    assert s.status == "interrupted" and s.steps == 5
    s = loop.run(exp, exp.config(), resume=True)
    assert s.status == "finished"
    a, b = losses(home / "exps" / "ref3"), losses(exp.path)
    assert all(a[k] == b[k] for k in a), [(k, a[k], b[k]) for k in a if a[k] != b[k]]


def test_in_process_training_takes_the_config_object_and_workers_read_the_file(home, capsys):
    """One process trains with the config it was given (config.yaml is only the record);
    a torchrun worker has nothing but the file."""
    from backlm.config import RunConfig, load_config
    from backlm.train import loop, worker
    from backlm.train.launch import create_experiment
    from tests.helpers import TINY

    cfg = load_config(RunConfig, overrides=[*TINY, "id=obj", "train.max_steps=2"],
                      flags={"log": {"wandb": "off"}})
    exp = create_experiment(cfg, home / "exps")
    assert exp.config() == cfg  # the record is the resolved config
    exp.config_path.write_text("train: [not, a, mapping\n")
    assert loop.run(exp, cfg).status == "finished"
    assert worker.main(["--experiment", str(exp.path)]) == 2
    assert "config.yaml line 2, column 1" in capsys.readouterr().err


def test_default_callbacks_are_imported_not_looked_up(tmp_path):
    from backlm.config import RunConfig
    from backlm.fivecat.callback import FivecatCallback
    from backlm.logs import LoggingCallback
    from backlm.train.early_stop import BestTracker, Convergence
    from backlm.train.loop import default_callbacks
    from tests.helpers import loop_state

    cfg = RunConfig()
    cfg.log.hdf5, cfg.log.wandb, cfg.log.sample_every = False, "off", 0
    kinds = [type(cb) for cb in default_callbacks(loop_state(tmp_path, cfg))]
    assert kinds == [Convergence, BestTracker, LoggingCallback]  # loggers last
    cfg.fivecat.every = 10
    kinds = [type(cb) for cb in default_callbacks(loop_state(tmp_path, cfg))]
    assert kinds == [Convergence, BestTracker, FivecatCallback, LoggingCallback]


def _no_partial_files(exp):
    left = [p.name for p in exp.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert not left, left


def test_a_second_ctrl_c_during_its_save_keeps_the_previous_checkpoint(home):
    ref = train_subprocess("ref4")
    assert ref.returncode == 0, ref.stderr
    res = train_subprocess("twice", {"BACKLM_INTERRUPT_AT_STEP": "6",
                                     "BACKLM_INTERRUPT_IN_SAVE": "6"})
    assert res.returncode == 130 and "Traceback" not in res.stderr, res.stderr
    said = [line for line in res.stdout.splitlines() if "resume point" in line]
    assert said == ["interrupted again while saving step 6: the checkpoint at step 4 is the "
                    "resume point; continue with `backlm train --resume twice`"], res.stdout
    exp = home / "exps" / "twice"
    assert sorted(p.name for p in (exp / "checkpoints").glob("step_*")) == [
        "step_000001", "step_000004"]  # (step 1: the best after the first evaluation)
    _no_partial_files(exp)
    assert json.loads((exp / "metadata.json").read_text())["status"] == "interrupted"
    resumed = train_subprocess("twice", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(home / "exps" / "ref4"), losses(exp)
    assert sorted(b) == list(range(1, 13)) and all(a[s] == b[s] for s in a)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_continues(home, monkeypatch):
    import errno

    from backlm.experiment import checkpoint as ckpt
    from backlm.experiment import weights

    real = weights.write

    def full_at_step_8(path, *args, **kw):
        if ".step_000008.tmp" in str(path) and str(path).endswith(ckpt.OPTIM_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kw)

    monkeypatch.setattr(weights, "write", full_at_step_8)
    res = run_cli(tiny_args("--direction", "forward", "--id", "full", steps=12))
    assert res.exit_code == 2, res.output
    exp = home / "exps" / "full"
    assert res.stderr.strip().splitlines() == [
        f"error: no space left on device while writing checkpoint step 8 to "
        f"{exp / 'checkpoints'}; the checkpoint at step 4 is still the resume point; free "
        "space and resume with `backlm train --resume full`"], res.stderr
    assert sorted(p.name for p in (exp / "checkpoints").glob("step_*")) == [
        "step_000001", "step_000004"]  # (step 1: the best after the first evaluation)
    _no_partial_files(exp)
    assert ckpt.load(exp / "checkpoints" / "step_000004")[2]["step"] == 4  # checksum verified
    assert json.loads((exp / "metadata.json").read_text())["status"] == "failed"
    monkeypatch.setattr(weights, "write", real)  # space freed
    # and a SIGKILL in mid-write had left these:
    (exp / "checkpoints" / ".step_000008.tmp").mkdir()
    (exp / ".metadata.json.k1ll.tmp").write_text("{")
    resumed = run_cli(["train", "--resume", "full"])
    assert resumed.exit_code == 0, resumed.output
    assert "removed what a killed run left half-written: .step_000008.tmp, " \
           ".metadata.json.k1ll.tmp" in resumed.output
    _no_partial_files(exp)
    assert max(losses(exp)) == 12 and ckpt.load(exp / "checkpoints" / "step_000012")


def test_an_unusable_token_cache_is_said_once(home):
    """A damaged token cache the launch could not replace: the loaders tokenize instead and
    the run says so in one line (not once per loader)."""
    from backlm.callbacks import Callback
    from backlm.config import RunConfig, load_config
    from backlm.data import token_cache as tc
    from backlm.tokenizer import Tokenizer
    from backlm.train import loop
    from backlm.train.launch import create_experiment
    from tests.helpers import TINY

    cfg = load_config(RunConfig, overrides=[*TINY, "id=tc", "train.max_steps=1",
                                            "train.device_batch_size=1", "train.eval_tokens=64"],
                      flags={"log": {"wandb": "off"}})
    exp = create_experiment(cfg, home / "exps")
    shard = home / "home" / "data" / "tiny" / "train_00000.parquet"
    path = tc.write_tokens(shard, Tokenizer.load(exp.tokenizer_dir))
    path.write_bytes(path.read_bytes()[:-1])
    said: list[str] = []

    class Ear(Callback):
        def on_message(self, state, text):
            said.append(text)

    assert loop.run(exp, cfg, observers=[Ear()]).status == "finished"
    assert [s for s in said if "token cache" in s] == [
        f"ignoring token cache {path}: truncated or overlong"]
