"""``backlm sweep``: a grid of training runs (directions × depths × seeds) as one resumable
unit, then their comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from backlm.commands.options import EXPERIMENTS_DIR, OVERRIDES, experiments_root
from backlm.ui import console, progress_bars, user_errors


@user_errors
def sweep(
    sweep_id: str = typer.Option(..., "--id", help="The sweep's name; members are "
                                 "ID-d<depth>-<direction>-s<seed>."),
    directions: str = typer.Option(None, "--directions",
                                   help="Comma list: forward, backward, bidirectional."),
    depths: str = typer.Option(None, "--depths", help="Comma list of depths, e.g. 2,4,6."),
    seeds: str = typer.Option(None, "--seeds",
                              help="Comma list of seeds; equal seeds read the same tokens."),
    config: str = typer.Option(None, "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = OVERRIDES,
    phase: str = typer.Option(None, "--phase",
                              help="base (default), or a chain such as base,sft per member."),
    max_steps: int = typer.Option(None, "--max-steps", help="Training steps of every member "
                                  "(default: the preset's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid and the estimated "
                                 "time per member and in total; write nothing."),
    compare: bool = typer.Option(False, "--compare", help="Only (re)write the comparison of "
                                 "the members finished so far."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Train every member of the grid (all directions of the smallest size and first seed
    first), 5CAT each, and compare them. Run the same command again after Ctrl-C: finished
    members are skipped and the interrupted one is resumed; a changed grid is refused."""
    from backlm.commands.options import refuse_unused
    from backlm.sweep import compare_sweep, open_sweep, parse_grid, plan_sweep

    root = experiments_root(experiments)
    if compare:
        refuse_unused("with --compare: it compares the sweep as recorded", {
            "--directions": (directions, None), "--depths": (depths, None),
            "--seeds": (seeds, None), "--config": (config, None), "--set": (overrides, None),
            "--phase": (phase, None), "--max-steps": (max_steps, None),
            "--dry-run": (dry_run, False)})
        grid = open_sweep(sweep_id, root)
        with progress_bars() as bars:
            result = compare_sweep(grid, root, bars)
        render_comparison(result)
        return
    grid = parse_grid(sweep_id, parse_directions(directions), depths, seeds, preset=config,
                      overrides=overrides or [], phase=phase, max_steps=max_steps)
    plan = plan_sweep(grid, root, estimate=dry_run)
    if dry_run:
        _render_plan(plan)
        return
    _run(plan)


def parse_directions(text: str | None) -> list[Any]:
    """``--directions`` as directions (the edge where their names come in)."""
    from backlm.direction import Direction
    from backlm.errors import UserError
    from backlm.sweep.grid import items

    out = []
    for name in items(text, "--directions", "forward,backward"):
        try:
            out.append(Direction.parse(name))
        except UserError:
            names = ", ".join(d.value for d in Direction)
            raise UserError(f"unknown direction {name!r} in --directions: choose from "
                            f"{names}") from None
    return out


def _run(plan: Any) -> None:
    from backlm.commands.render import finish, render_summary
    from backlm.experiment.provenance import command_line
    from backlm.sweep import run_sweep
    from backlm.ui import TrainDisplay

    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    with progress_bars() as bars:
        result = run_sweep(plan, command=command_line(), observers=[TrainDisplay()], say=say,
                           progress=bars)
    if result.stopped is not None:
        render_summary(result.stopped)
        console.print(f"sweep {plan.grid.sweep_id} stopped at {result.stopped.exp_id}: run the "
                      "same command again to continue where it stopped", highlight=False)
        finish(result.stopped)
    if result.comparison is not None:
        render_comparison(result.comparison)
    elif result.summary_path is not None:
        console.print(f"sweep comparison (up to date): {result.summary_path}", highlight=False,
                      soft_wrap=True)


def _render_plan(plan: Any) -> None:
    from rich.table import Table

    from backlm.ui import duration

    table = Table(title=f"sweep {plan.grid.sweep_id} · dry run (nothing written)")
    for col in ("#", "member", "direction", "depth", "seed", "state", "parameters", "tokens",
                "est. time"):
        table.add_column(col, justify="left" if col in ("member", "direction", "state")
                         else "right")
    for i, mp in enumerate(plan.members, 1):
        e = mp.estimate
        table.add_row(str(i), mp.member.id, str(mp.member.direction), str(mp.member.depth),
                      str(mp.member.seed), mp.state, f"{e.params:,}", f"{e.planned_tokens:,}",
                      duration(e.wall_seconds))
    console.print(table)
    left = sum(mp.estimate.wall_seconds for mp in plan.members if mp.state != "finished")
    console.print(f"{len(plan.members)} members · estimated {duration(plan.estimated_seconds)} "
                  f"in total ({duration(left)} left to train; 5CAT and the comparison come on "
                  f"top) · device {plan.members[0].estimate.device}", highlight=False)


def render_comparison(result: Any) -> None:
    """A sweep's comparison on the console: gap per size, cost per order, 5CAT, where it is
    (``backlm quickstart`` shows its own the same way)."""
    from rich.table import Table

    def ci(iv: Any) -> str:
        return "—" if iv is None or iv.lo is None else f"[{iv.lo:+.4f}, {iv.hi:+.4f}]"

    table = Table(title=f"sweep {result.grid.sweep_id} · val gap forward − backward "
                  "(bits/byte)" + (", and the bidirectional model's cost per order"
                                   if result.costs else ""))
    for col in ("what", "depth", "per seed", "mean", "95% t over seeds", "95% CI pooled docs"):
        table.add_column(col, justify="left" if col in ("what", "per seed") else "right")
    for r in [*result.sizes, *result.costs]:
        what = (f"{r.order} order: bidi − dedicated" if hasattr(r, "order") else
                "fwd − bwd models" if r.kind == "models" else "bidirectional own orders")
        seeds = " ".join(f"s{s} {iv.value:+.4f}" for s, iv in sorted(r.per_seed.items()))
        mean = (r.seeds or r.pooled).value if (r.seeds or r.pooled) else float("nan")
        table.add_row(what, f"d{r.depth}", seeds, f"{mean:+.4f}", ci(r.seeds), ci(r.pooled))
    console.print(table)
    five = Table(title="5CAT")
    for col in ("experiment", "gates", "verdict"):
        five.add_column(col)
    for r in result.fivecat:
        verdict = ("[red]DIRECTION INVERTED[/]" if r["inverted"] else "[green]passed[/]"
                   if r["ok"] else "[yellow]some gates failed[/]" if r["passed"] is not None
                   else "no result")
        five.add_row(r["experiment"], "—" if r["passed"] is None else
                     f"{r['passed']}/{r['total']}", verdict)
    console.print(five)
    if result.missing:
        console.print(f"not finished yet, left out: {', '.join(result.missing)}",
                      highlight=False)
    console.print(f"sweep comparison: {result.folder.summary_path}", highlight=False,
                  soft_wrap=True)
