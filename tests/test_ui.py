"""Console output: the user-error boundary, the progress helper, the training display."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import typer
from rich.console import Console

from backlm import ui
from backlm.errors import UserError


def test_user_errors_become_one_line_and_exit_2(capsys):
    @ui.user_errors
    def command():
        raise UserError("bad [thing]\nsecond line")

    with pytest.raises(typer.Exit) as exc:
        command()
    assert exc.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: bad [thing] second line" in err


def test_bars_make_one_bar_per_label(monkeypatch):
    console = Console(record=True, width=100, force_terminal=False)
    monkeypatch.setattr(ui, "console", console)
    progress = ui.make_progress("count", transient=False)
    bars = ui.Bars(progress)
    with progress:
        bars("lm · forward", 1, 4)
        bars("lm · forward", 4, 4)
        bars("arc · backward", 0, None, description="arc, reading")
        bars.print("a line above the bars")
    tasks = {t.description: t for t in progress.tasks}
    assert set(tasks) == {"lm · forward", "arc, reading"}
    assert tasks["lm · forward"].completed == 4 and tasks["arc, reading"].total is None
    assert "a line above the bars" in console.export_text()
    for kind in ("count", "bytes", "train"):
        assert ui.make_progress(kind).columns  # every kind has its columns


def test_train_display_shows_steps_evaluations_and_messages(monkeypatch):
    console = Console(record=True, width=120, force_terminal=False)
    monkeypatch.setattr(ui, "console", console)
    display = ui.TrainDisplay(plain=False)  # the bar (a terminal)
    state = SimpleNamespace(step=0, run=SimpleNamespace(cfg=SimpleNamespace(
        train=SimpleNamespace(max_steps=10))))
    display.on_train_start(state)
    display.on_eval(state, 0, {"val_bpb": 2.0})  # the step-0 evaluation is not repeated
    display.on_step_end(state, 5, {"loss": 3.25, "lr_mult": 1.0, "tokens_per_sec": 1234.0,
                                   "mfu": 0.5})
    display.on_eval(state, 5, {"val_loss": 3.0, "val_bpb": 1.5})
    display.on_message(state, "restored the best checkpoint")
    display.on_train_end(state, "finished")
    text = console.export_text()
    assert "step      5 · val_loss 3.0000 · val_bpb 1.5000" in text
    assert "restored the best checkpoint" in text and "val_bpb 2.0" not in text
    assert "loss 3.250" in text and "1,234 tok/s" in text and "5/10" in text


def test_one_display_for_runs_in_turn_prints_each_message_once(monkeypatch):
    """A chain or quickstart passes one display to several runs: no run repeats the messages
    of the one before it."""
    console = Console(record=True, width=120, force_terminal=False)
    monkeypatch.setattr(ui, "console", console)
    display = ui.TrainDisplay(plain=False)
    state = SimpleNamespace(step=0, run=SimpleNamespace(cfg=SimpleNamespace(
        train=SimpleNamespace(max_steps=4))))
    for run in ("first", "second", "third"):
        display.on_message(state, f"precision of the {run} run")  # said before the bar starts
        display.on_train_start(state)
        display.on_message(state, f"during the {run} run")
        display.on_train_end(state, "finished")
    text = console.export_text()
    for run in ("first", "second", "third"):
        assert text.count(f"precision of the {run} run") == 1, text
        assert text.count(f"during the {run} run") == 1, text
    lines = [x for x in text.splitlines() if "run" in x]
    assert lines.index("precision of the second run") > lines.index("during the first run")


def test_without_a_terminal_step_lines_come_by_steps_or_seconds_whichever_first(monkeypatch):
    console = Console(record=True, width=60, force_terminal=False)  # a log file
    monkeypatch.setattr(ui, "console", console)
    now = [100.0]
    display = ui.TrainDisplay(clock=lambda: now[0])  # plain: stdout is no terminal
    state = SimpleNamespace(step=0, run=SimpleNamespace(cfg=SimpleNamespace(
        train=SimpleNamespace(max_steps=200),
        log=SimpleNamespace(print_every=50, print_seconds=10.0))))
    display.on_message(state, "precision: cpu · fp32")
    display.on_train_start(state)
    record = {"loss": 5.1234, "lr_mult": 1.0, "tokens_per_sec": 10050.4, "mfu": 0.123,
              "dt": 0.812}
    for step in range(1, 201):
        now[0] += 3.0 if step == 1 else (0.1 if step <= 120 else 1.0)  # slower after 120
        display.on_step_end(state, step, record)
    display.on_train_end(state, "finished")
    lines = console.export_text().splitlines()
    assert lines[0] == "precision: cpu · fp32"
    assert lines[1] == ("step 00001/00200 (0.50%) | loss: 5.1234 | lrm: 1.00 | dt: 812ms | "
                        "tok/sec: 10,050 | mfu: 12.3% | eta: 2m42s")  # long: not wrapped
    steps = [int(x[5:10]) for x in lines[1:]]
    # every 50 steps while steps are fast, every 10 s once they are slow, and the last step
    assert steps == [1, 51, 101, 129, 139, 149, 159, 169, 179, 189, 199, 200]
    assert lines[2].endswith("eta: 15s")  # 50 steps in 5 s since the first: 149 to go
    assert lines[-1].endswith("eta: 0s")
    assert ui.duration(59.6) == "1m00s" and ui.duration(3725) == "1h02m"
