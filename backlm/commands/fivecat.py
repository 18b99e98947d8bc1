"""``backlm 5cat``: the five-check alignment test of one checkpoint (DESIGN.md §4)."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.ui import console, user_errors


@user_errors
def fivecat(
    exp: str = typer.Argument(..., help="Experiment id, tag (d4_backward) or folder."),
    step: int = typer.Option(None, "--step", help="Checkpoint step (default: best, else last)."),
    max_samples: int = typer.Option(None, "--max-samples",
                                    help="Documents per held-out set (default from the spec)."),
    experiments: Path = typer.Option(None, "--experiments-dir",
                                     help="Where experiments live (default ./experiments)."),
    direction: str = typer.Option(None, "--direction",
                                  help="Judge the model as this direction instead of the one "
                                       "its checkpoint declares (to test a suspected mislabel)."),
    spec: str = typer.Option(None, "--spec",
                             help="Thresholds YAML (default configs/fivecat.yaml)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Run 5CAT on VAL and OOD text; exit 0 only when all five gates pass (1 otherwise)."""
    from backlm.direction import Direction
    from backlm.errors import UserError
    from backlm.fivecat import load_spec, result_path, run_fivecat, save_result
    from backlm.fivecat.engine import held_out_splits
    from backlm.inference import load_model
    from backlm.paths import experiments_root

    spec_ = load_spec(spec).with_max_samples(max_samples)
    override = Direction.parse(direction).value if direction else None
    lm = load_model(exp, experiments or experiments_root(), step, device)
    declared = override or lm.direction
    meta = lm.exp.metadata()
    if not meta.get("data_dir"):
        raise UserError(f"experiment {lm.exp.id} names no data_dir in metadata.json: it cannot "
                        "be checked without its held-out text")
    held_out_splits(Path(meta["data_dir"]))  # a missing data folder fails before any output
    console.print(f"5CAT · {lm.exp.id} · step {lm.step} · declared {declared}"
                  + (f" (checkpoint says {lm.direction})" if override else ""), highlight=False)
    result = run_fivecat(lm.model, lm.tokenizer, declared, Path(meta["data_dir"]), spec_)
    phase = str(lm.meta.get("phase") or meta.get("phase") or "base")
    path = result_path(lm.exp, lm.step, phase, override if override != lm.direction else None)
    save_result(path, result, {"experiment": lm.exp.id, "step": lm.step, "phase": phase,
                               "checkpoint_direction": lm.direction})
    _render(result, lm.exp.id, lm.step)
    _research_log(lm.exp.path / f"{phase}.h5", lm.step, result)
    console.print(f"saved {path}", highlight=False)
    raise typer.Exit(0 if result.passed else 1)


def _render(result, exp_id: str, step: int) -> None:
    from rich.table import Table

    from backlm.fivecat import GATES, INVERTED

    bidi = any(r.marker for r in result.rows)
    table = Table(title=f"5CAT · {exp_id} · step {step} · {result.direction}")
    cols = ["gate", "set", *(["marker"] if bidi else []), "figure", "value", "threshold", "",
            "detail"]
    for col in cols:
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for r in result.rows:
        mark = "[green]✓[/]" if r.passed else "[red]✗[/]"
        cells = [f"{r.gate} {GATES[r.gate]}", r.split, *([r.marker or ""] if bidi else []),
                 r.figure, f"{r.value:+.3f}", f"{r.op} {r.threshold:+.3f}", mark, r.detail]
        table.add_row(*cells)
    console.print(table)
    verdicts = "  ".join(f"{g} {'[green]✓[/]' if result.gate_passed(g) else '[red]✗[/]'}"
                         for g in GATES)
    colour = "green" if result.passed else "red"
    console.print(f"[bold {colour}]5CAT {result.passed_count}/5[/]  {verdicts}  · score "
                  f"(0.8·B + 0.2·D) {result.score:+.3f} · {result.seconds:.1f} s")
    for w in result.warnings:
        style = "bold red" if w.startswith(INVERTED) else "yellow"
        console.print(f"[{style}]warning:[/] {w}", highlight=False)


def _research_log(h5_path: Path, step: int, result) -> None:
    """Add the headline figures to the experiment's research log, when it has one."""
    if not h5_path.is_file():
        return
    from backlm.errors import UserError

    try:
        from backlm.logs.hdf5 import append_eval
    except ImportError:
        return
    values = {k.removeprefix("fivecat_"): float(v) for k, v in result.figures().items()
              if v is not None}
    try:
        append_eval(h5_path, "5cat", step, values)
    except UserError as exc:
        console.print(f"[yellow]warning:[/] research log not updated: {exc}", highlight=False)
