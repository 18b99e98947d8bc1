"""``backlm config show``: the resolved config of a preset, every key with its help and range."""

from __future__ import annotations

import typer

from backlm.ui import console, user_errors

__all__ = ["app", "show"]

app = typer.Typer(help="Inspect run configurations.", no_args_is_help=True,
                  add_completion=False)


@app.command("show")
@user_errors
def show(
    preset: str = typer.Argument(None, help="A preset (cpu-tiny, d12, d20, d26) or a YAML "
                                 "file; default: the built-in defaults."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a key: section.key=value "
                                        "(repeatable)."),
) -> None:
    """Print every key of the resolved config with its value, help and allowed range."""
    from rich.table import Table

    from backlm.config import show as resolve

    rows = resolve(preset, overrides)
    table = Table(title=f"config: {preset or 'defaults'}", title_justify="left")
    for column in ("key", "value", "help", "range"):
        table.add_column(column, overflow="fold")
    for key in rows:
        value = key.value.value if hasattr(key.value, "value") else key.value
        table.add_row(key.name, repr(value) if isinstance(value, str) else str(value),
                      key.help, key.need)
    console.print(table)
