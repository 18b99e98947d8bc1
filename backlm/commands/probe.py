"""``backlm probe reversal``: does reading order lift the reversal curse?"""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENTS_DIR, OVERRIDES, experiments_root
from backlm.ui import console, progress_bars, user_errors

app = typer.Typer(help="Built-in experiments on trained models.", no_args_is_help=True)


@app.command("reversal")
@user_errors
def reversal(
    experiments_: list[str] = typer.Argument(None, metavar="[EXP]...",
                                             help="Experiments to probe (ids, tags or folders)."),
    parent: str = typer.Option(None, "--parent", "-p",
                               help="Teach the facts to a new mid child of this experiment "
                                    "first, then probe the child."),
    exp_id: str = typer.Option(None, "--id", help="The teaching child's id."),
    steps: int = typer.Option(150, "--steps", help="The teaching child's optimizer steps."),
    overrides: list[str] = OVERRIDES,
    facts: int = typer.Option(100, "--facts", help="Facts stated in training."),
    controls: int = typer.Option(50, "--controls", help="Held-out facts, never trained."),
    k: int = typer.Option(10, "--k", help="Candidates per question (the right one included)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the facts and the candidates."),
    resamples: int = typer.Option(2000, "--resamples", help="Bootstrap resamples."),
    samples: int = typer.Option(5, "--samples", help="Facts per probe whose greedy answer the "
                                "generation engine also writes (kept as samples)."),
    device: str = DEVICE,
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Fictional facts "A is the Y of B": can each model give B from A and A from B?

    Each model answers by its own means (forward continues a prefix, backward writes what
    precedes a suffix, bidirectional both), in the trained phrasing and the reversed one
    ("The Y of B is" → A); exact match and rank among K, on taught facts and never-taught
    controls (chance), with bootstrap intervals. Stored in each experiment's evaluations/.
    """
    from backlm.compare.probe import ProbeOptions, run_probe

    options = ProbeOptions(facts=facts, controls=controls, k=k, seed=seed, resamples=resamples,
                           samples=samples,
                           device=device or "auto", parent=parent, exp_id=exp_id, steps=steps,
                           overrides=list(overrides or []))
    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    if parent is None:
        with progress_bars() as bars:
            results = run_probe(experiments_ or [], experiments_root(experiments), options,
                                progress=bars, say=say)
    else:
        from backlm.ui import TrainDisplay

        results = run_probe(experiments_ or [], experiments_root(experiments), options,
                            say=say, observers=[TrainDisplay()])
    render(results)


def render(results) -> None:
    """One table per model: each probe's numbers on taught facts and controls."""
    from rich.table import Table

    from backlm.compare.probe import rows, shown

    for res in results:
        d = res.data
        chance = d.get("chance") or {}
        table = Table(title=f"{res.exp.id} ({d.get('model_direction')}, step {d.get('step')}): "
                            f"{d.get('facts')} facts, {d.get('controls')} controls, K={d.get('k')}"
                            f" · chance MRR {chance.get('mrr', 0):.3f}, top-1 "
                            f"{chance.get('top1', 0):.3f}")
        for col in ("flow", "phrasing", "order", "MRR facts", "MRR controls", "top-1 facts",
                    "EM facts", "EM controls"):
            table.add_column(col, justify="left" if col in ("flow", "phrasing", "order")
                             else "right")
        for r in rows(d):
            table.add_row(r["flow"], r["phrasing"], str(r["order"]), shown(r["facts_mrr"]),
                          shown(r["controls_mrr"]), shown(r["facts_top1"]),
                          shown(r["facts_em"]), shown(r["controls_em"]))
        console.print(table)
        console.print(f"{'stored' if res.reused else 'written'}: {res.path} · figure "
                      f"{res.figure}", highlight=False, soft_wrap=True)
