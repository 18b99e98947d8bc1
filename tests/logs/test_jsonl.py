"""``metrics.jsonl``: one line per step, flushed as written, truncated on resume; reading skips
a line torn by a kill."""

from __future__ import annotations

from backlm.logs.jsonl import JsonlLogger, read, truncate


def test_every_line_is_readable_before_close(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLogger(path)
    log.log(0, {"val_loss": 3.0})
    log.log(1, {"loss": 2.5, "lr_mult": 1.0})
    assert read(path) == [{"step": 0, "val_loss": 3.0}, {"step": 1, "loss": 2.5, "lr_mult": 1.0}]
    log.close()
    log.close()  # twice is fine


def test_resume_drops_lines_past_the_checkpoint_then_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLogger(path)
    for step in range(7):
        log.log(step, {"loss": float(step)})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 7, "lo')  # the run was killed mid-line
    log = JsonlLogger(path, resume_step=4)
    assert [r["step"] for r in read(path)] == [0, 1, 2, 3, 4]
    log.log(5, {"loss": 0.5})
    log.close()
    assert [r["step"] for r in read(path)] == [0, 1, 2, 3, 4, 5]
    assert path.read_text().count("\n") == 6 and path.read_text().endswith("}\n")


def test_truncate_keeps_records_without_a_step_and_ignores_a_missing_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"note": "start"}\n{"step": 3}\n{"step": 9}\n')
    truncate(path, 3)
    assert read(path) == [{"note": "start"}, {"step": 3}]
    truncate(tmp_path / "none.jsonl", 3)
    assert not (tmp_path / "none.jsonl").exists()


def test_read_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.9}\n{"step": 2, "lo')
    assert read(path) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.9}]
    assert read(tmp_path / "missing.jsonl") == []
