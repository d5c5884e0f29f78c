"""The ``fd`` command line: one thin command per stage over the library in :mod:`fdcli`.

Each command parses its options, calls one library function and prints the result. Any
:class:`~fdcli.errors.FdError` is printed to stderr and the command exits 1, without a
traceback. Heavy libraries are imported inside the command bodies.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import FdError

app = typer.Typer(
    name="fd",
    help="[bold]fd[/bold]: federated distillation for open foundation models.\n\n"
         "Institutions share compressed logits on a public proxy set ([i]logit bundles[/i]), "
         "never data or weights. Everything works offline.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn an FdError into a message on stderr and exit code 1."""
    try:
        yield
    except FdError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False,
                  soft_wrap=True)
        raise typer.Exit(1) from None


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"fd {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print fd's version and exit.")]
    = False,
) -> None:
    """fd: federated distillation for open foundation models."""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A bundle folder, or one shard file "
                                              "(shard-NNNNN.safetensors.zst).")],
    json_out: JsonOpt = False,
) -> None:
    """Describe a logit bundle, or a single shard, without trusting more than it must.

    For a bundle this reads only the manifest: task, encoding, label space, producer, sizes
    and fidelity. Use [bold]fd verify[/bold] to check every shard.

    [bold]Example[/bold]: fd inspect clients/hospital-a/bundle --json
    """
    from .bundle.inspect import describe

    with reporting_errors():
        info = describe(path)
    if json_out:
        out.print_json(json.dumps(info))
        return
    table = Table(title=f"{info['kind']}: {path}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info["summary"].items():
        table.add_row(key, _human(value) if key.endswith("bytes") and isinstance(
            value, (int, float)) else str(value))
    out.print(table)


@app.command()
def verify(
    bundle_dir: Annotated[Path, typer.Argument(help="The bundle folder to check.")],
    json_out: JsonOpt = False,
) -> None:
    """Check everything in a bundle: the manifest, every shard's size and sha256, bounded
    decompression, tensor shapes and dtypes, and the values themselves.

    Exits 0 on a sound bundle and 1 otherwise, listing every problem found.

    [bold]Example[/bold]: fd verify usb-stick/hospital-a-bundle
    """
    from .bundle import verify_bundle

    report = verify_bundle(bundle_dir)
    if json_out:
        out.print_json(json.dumps({"path": str(bundle_dir), "ok": report.ok,
                                   "problems": report.problems,
                                   "shards_checked": report.shards_checked,
                                   "rows_checked": report.rows_checked}))
    elif report.ok:
        m = report.manifest
        out.print(f"[green]OK[/green] {bundle_dir}: {report.shards_checked} shard(s), "
                  f"{report.rows_checked} rows, {m.examples} examples, encoding "
                  f"{m.encoding['name']}", highlight=False)
    else:
        err.print(f"[bold red]error:[/bold red] {bundle_dir}: {len(report.problems)} "
                  "problem(s) found:", highlight=False)
        for p in report.problems:
            err.print(f"  - {p}", markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point (``fd``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    app()


if __name__ == "__main__":
    sys.exit(main())
