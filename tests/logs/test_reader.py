"""What ``backlm log`` reads from a research log: the summary tables, and new steps of a live
run followed until it ends."""

from __future__ import annotations

import json
import os
import threading
import time

from tests.helpers import hdf5_logger as _logger
from tests.helpers import run_cli
from tests.helpers import train_logged as train


def test_log_command_shows_tables(home):
    train("shown", steps=4)
    res = run_cli(["log", "shown"])
    assert res.exit_code == 0, res.output
    for needle in ("/scalars", "/per_token", "/gradients", "/activations", "/eval", "val_bpb",
                   "lm_head.weight", "blocks.1", "argmax accuracy", "(5,)"):
        assert needle in res.output, needle
    res = run_cli(["log", "shown", "--follow"])  # a finished run: summary, then it stops
    assert res.exit_code == 0 and "is not running (finished)" in res.output


def test_log_follow_prints_new_steps_until_the_run_ends(tmp_path):
    from backlm.atomic import write_json

    exp = tmp_path / "exps" / "live"
    exp.mkdir(parents=True)
    write_json(exp / "metadata.json", {"id": "live", "phase": "base", "status": "running"})
    import socket

    (exp / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    log = _logger(exp / "base.h5", flush_every=1)
    log.log(0, {"val_loss": 3.0})

    def write():
        for step in range(1, 4):
            time.sleep(0.4)
            log.log(step, {"loss": 2.0 - step / 10})
        log.close()
        write_json(exp / "metadata.json", {"id": "live", "phase": "base", "status": "finished"})

    writer = threading.Thread(target=write)
    writer.start()
    res = run_cli(["log", "live", "--follow", "--experiments-dir", str(tmp_path / "exps")])
    writer.join()
    assert res.exit_code == 0, res.output
    assert "step       3 · loss 1.7" in res.output and "is not running (finished)" in res.output
