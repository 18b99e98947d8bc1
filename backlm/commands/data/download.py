"""``backlm data download``: fetch public pretraining shards into a dataset folder.

Task sets come through ``--task arc|mmlu|gsm8k`` and land in ``$BACKLM_HOME/data/tasks/``,
where ``backlm eval`` reads them; ``--task smoltalk`` fetches the SmolTalk chat set into
``$BACKLM_HOME/data/smoltalk/`` (or ``--dataset``).
"""

from __future__ import annotations

import typer

from backlm.ui import console, progress_bars, user_errors


@user_errors
def download(
    name: str = typer.Argument("fineweb-edu", help="Dataset to fetch, e.g. fineweb-edu."),
    shards: int | None = typer.Option(
        None, "--shards", help="How many shards to fetch; the last --val-shards become val "
        "(default 2; with --task smoltalk, train files, default 1, plus its test file as val)."
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Folder name under $BACKLM_HOME/data (default: NAME)."
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Fetch from this mirror instead of the dataset's home URL."
    ),
    val_shards: int = typer.Option(1, "--val-shards", help="Shards kept for validation."),
    workers: int = typer.Option(2, "--workers", help="Parallel downloads."),
    task: str | None = typer.Option(
        None, "--task", help="Fetch an evaluation set instead (arc, mmlu or gsm8k), or the "
        "smoltalk chat set."
    ),
) -> None:
    """Download shards of a public dataset (resumable; rerun to continue or to grow it)."""
    from backlm.commands.options import refuse_unused
    from backlm.data.chat_download import is_chat_source
    from backlm.data.datasets import download_dataset
    from backlm.paths import dataset_dir

    chat = task is not None and is_chat_source(task.strip().lower())
    if task is not None:
        refuse_unused(f"with --task {task}: it fetches that set alone (NAME, --val-shards and "
                      "--workers are for NAME's shards)",
                      {"NAME": (name, "fineweb-edu"), "--val-shards": (val_shards, 1),
                       "--workers": (workers, 2)})
    if task is not None and not chat:
        refuse_unused(f"with --task {task}: an evaluation set is fetched whole into the tasks "
                      "folder", {"--shards": (shards, None), "--dataset": (dataset, None)})
    if chat:
        _download_chat(task.strip().lower(), dataset, shards, base_url)
        return
    if task is not None:
        _download_task(task, base_url)
        return
    directory = dataset_dir(dataset or name)
    with progress_bars("bytes") as bars:
        summary = download_dataset(
            name, directory, 2 if shards is None else shards, base_url=base_url,
            val_shards=val_shards,
            workers=workers, progress=bars,
        )
    _render(summary)


def _download_chat(name: str, dataset: str | None, shards: int | None,
                   base_url: str | None) -> None:
    from rich.filesize import decimal

    from backlm.data.chat_download import DEFAULT_CHAT_SHARDS, download_chat
    from backlm.paths import dataset_dir

    with progress_bars("bytes") as bars:
        summary = download_chat(name, dataset_dir(name if dataset is None else dataset),
                                DEFAULT_CHAT_SHARDS if shards is None else shards,
                                base_url=base_url, progress=bars)
    for path in summary.files:
        console.print(f"{path}", highlight=False, soft_wrap=True)
    console.print(f"chat set {name}: {summary.downloaded} fetched ({decimal(summary.bytes)}), "
                  f"{summary.skipped} already present, {summary.seconds:.1f} s", highlight=False)


def _download_task(task: str, base_url: str | None) -> None:
    from rich.filesize import decimal

    from backlm.data.datasets import download_task
    from backlm.evaluation.tasks import tasks_root

    with progress_bars("bytes") as bars:
        summary = download_task(task.strip().lower(), tasks_root(), base_url=base_url,
                                progress=bars)
    for path in summary.files:
        console.print(f"{path}", highlight=False, soft_wrap=True)
    console.print(f"task {summary.task}: {summary.downloaded} fetched "
                  f"({decimal(summary.bytes)}), {summary.skipped} already present, "
                  f"{summary.seconds:.1f} s", highlight=False)


def _render(summary) -> None:
    from rich.filesize import decimal
    from rich.table import Table

    table = Table(title=f"downloaded {summary.name}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("folder", str(summary.directory))
    table.add_row("shards", f"{len(summary.train)} train + {len(summary.val)} val")
    table.add_row("fetched now", f"{summary.downloaded} ({decimal(summary.bytes)})")
    table.add_row("already present", str(summary.skipped))
    if summary.removed:
        table.add_row("removed (stale)", str(summary.removed))
    table.add_row("time", f"{summary.seconds:.1f} s")
    console.print(table)
