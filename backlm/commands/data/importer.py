"""``backlm data import``: turn your own .txt/.jsonl/.parquet files into a dataset, or (with
``--chat``) messages JSONL files into a chat dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.ui import console, progress_bars, user_errors


@user_errors
def import_(
    paths: list[Path] = typer.Argument(
        ..., help=".txt, .jsonl or .parquet files, or folders of them (searched recursively)."
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Folder name under $BACKLM_HOME/data (default: imported, or "
        "imported-chat with --chat)."),
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
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Share of documents (chosen by a hash of their text) for "
        "val; default 0.01, or 0.02 of conversations with --chat."
    ),
    chat: bool = typer.Option(
        False, "--chat", help='Import conversations: JSONL files with one {"messages": [{"role": '
        '"user", "content": ...}, ...]} per line.'
    ),
) -> None:
    """Import your own text as train/val shards (nothing is written if any input is bad)."""
    from backlm.data.importer import import_files
    from backlm.paths import dataset_dir

    if chat:
        from backlm.commands.options import refuse_unused

        refuse_unused("with --chat: conversations are read whole from their messages field, "
                      "into a new chat dataset", {"--append": (append, False),
                      "--split-paragraphs": (split_paragraphs, False),
                      "--text-field": (text_field, "text")})
        _import_chat(paths, "imported-chat" if dataset is None else dataset,
                     0.02 if val_fraction is None else val_fraction)
        return
    directory = dataset_dir("imported" if dataset is None else dataset)
    val_fraction = 0.01 if val_fraction is None else val_fraction
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


def _import_chat(paths: list[Path], dataset: str, val_fraction: float) -> None:
    from rich.table import Table

    from backlm.data.chat import import_chat
    from backlm.paths import dataset_dir

    summary = import_chat(paths, dataset_dir(dataset), val_fraction=val_fraction)
    table = Table(title=f"{summary.files} file(s) imported as chat dataset {dataset}",
                  caption=str(summary.path))
    table.add_column("split")
    table.add_column("conversations", justify="right")
    table.add_row("train", f"{summary.train:,}")
    table.add_row("val", f"{summary.val:,}")
    console.print(table)
