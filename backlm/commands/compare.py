"""``backlm compare EXP EXP ...``: experiments side by side, and the forward-vs-backward gap
on the same documents with confidence intervals."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENTS_DIR, experiments_root
from backlm.ui import progress_bars, user_errors


@user_errors
def compare(
    experiments_: list[str] = typer.Argument(
        ..., metavar="EXP", help="Two or more experiment ids, tags or folders."),
    metric: str = typer.Option("val_bpb", "--metric",
                               help="The validation metric to plot and table."),
    output: Path = typer.Option(
        None, "--output", "-o", help="Folder to write (default: "
        "./comparisons/<id>_vs_<id>...); an earlier comparison there is replaced."),
    bootstrap: int = typer.Option(2000, "--bootstrap",
                                  help="Bootstrap resamples for the gap's interval."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap draws."),
    device: str = DEVICE,
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Compare experiments: curves, metrics, 5CAT, cost, the transfer matrix and the
    forward-vs-backward gap with a paired bootstrap interval (Markdown, PNGs, CSV)."""
    from backlm.commands.render import render_comparison
    from backlm.compare import CompareOptions, run_compare

    options = CompareOptions(metric=metric, output=output, bootstrap=bootstrap, seed=seed,
                             device=device or "auto")
    with progress_bars() as bars:
        result = run_compare(experiments_, experiments_root(experiments), options, bars)
    render_comparison(result)

