"""The ``stsun`` command line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from stsun.profiles import ProfileError, builtin_profiles, load_profile

app = typer.Typer(help="STSUN deployment runtime.", no_args_is_help=True, add_completion=False)
console = Console()


@app.callback()
def main() -> None:
    """STSUN deployment runtime: profiles, export, inference, serving."""


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


@app.command()
def profiles(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    extra: Annotated[Optional[list[Path]], typer.Option("--file", help="Also show these profile files.")] = None,
) -> None:
    """List the deployment profiles (built-in, plus any --file)."""
    try:
        items = builtin_profiles() + [load_profile(p) for p in extra or []]
    except ProfileError as err:
        fail(str(err))
    if as_json:
        print(json.dumps([p.summary() for p in items], indent=2))
        return
    table = Table(title="STSUN profiles")
    table.add_column("name", no_wrap=True)
    for col in ("task", "sensor", "bands", "GSD m", "tile", "T_in", "T_out", "classes"):
        table.add_column(col)
    for p in items:
        table.add_row(p.name, p.task, p.sensor, str(p.c_in), f"{p.gsd_m:g}", str(p.tile_size),
                      str(p.t_in), str(p.t_out), f"{p.c_out}: {', '.join(p.classes)}")
    console.print(table)


def _register_build() -> None:
    from stsun.export.build_engine import build_command

    app.command("build")(build_command)


_register_build()

if __name__ == "__main__":
    app()
