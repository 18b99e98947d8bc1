"""``backlm data import``: turn your own .txt/.jsonl/.parquet files into a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.ui import console, progress_bars, user_errors


@user_errors
def import_(
    paths: list[Path] = typer.Argument(
        ..., help=".txt, .jsonl or .parquet files, or folders of them (searched recursively)."
    ),
    dataset: str = typer.Option("imported", "--dataset", help="Folder name under $BACKLM_HOME/data."),
    append: bool = typer.Option(
        False, "--append", help="Add shards to an existing dataset instead of refusing."
    ),
    split_paragraphs: bool = typer.Option(
        False, "--split-paragraphs", help="Treat each blank-line-separated paragraph of a .txt "
        "file as its own document (default: one document per file)."
    ),
    text_field: str = typer.Option(
        "text", "--text-field", help="JSONL field / parquet column holding the text."
    ),
    val_fraction: float = typer.Option(
        0.01, "--val-fraction", help="Share of documents (chosen by a hash of their text) for val."
    ),
) -> None:
    """Import your own text as train/val shards (nothing is written if any input is bad)."""
    from backlm.data.importer import import_files
    from backlm.paths import dataset_dir

    directory = dataset_dir(dataset)
    with progress_bars() as bars:
        summary = import_files(
            paths, directory, val_fraction=val_fraction, text_field=text_field,
            split_paragraphs=split_paragraphs, append=append,
            progress=lambda path, i, n: bars("reading", i, n, description=f"reading {path.name}"),
        )
    _render(summary)


def _render(summary) -> None:
    from rich.table import Table

    verb = "appended" if summary.appended else "imported"
    table = Table(title=f"{summary.files} file(s) {verb}", caption=str(summary.directory))
    table.add_column("split")
    table.add_column("documents", justify="right")
    table.add_column("characters", justify="right")
    table.add_column("shards", justify="right")
    for split in ("train", "val"):
        n_shards = sum(1 for p in summary.shards if p.name.startswith(f"{split}_"))
        table.add_row(split, f"{summary.docs[split]:,}", f"{summary.chars[split]:,}", str(n_shards))
    console.print(table)
    if summary.skipped_files:
        console.print(f"skipped {summary.skipped_files} file(s) with other extensions")
    if summary.docs["val"] == 0 and not summary.appended:
        console.print("[yellow]warning:[/] no val documents; raise --val-fraction or add text")
