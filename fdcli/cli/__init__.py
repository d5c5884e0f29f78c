"""The ``fd`` command line: one thin command per stage over the library in :mod:`fdcli`.

Each command parses its options, calls one library function and prints the result. Any
:class:`~fdcli.errors.FdError` is printed to stderr and the command exits 1, without a
traceback. Heavy libraries are imported inside the command bodies. The commands whose work
depends on the task (train-specialist, emit-logits, aggregate, distill, evaluate, simulate)
dispatch through the task registry (:mod:`fdcli.tasks`, :mod:`.dispatch`) and name no task.

Modules: ``stages`` (the five stage commands), ``simulate``, ``bundles`` (inspect, verify,
keygen, merge), ``data`` (partition, generate); ``options`` holds the shared options and
``dispatch`` the registry's side, ``group`` the path checks that keep exit code 2 for bad
invocations only; ``fdcli.console`` does the printing.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .. import __version__
from ..console import configure_output, out, reporting_errors
from ..launch import ranks
from .group import EXIT_CODES, FdGroup

app = typer.Typer(
    name="fd",
    help="[bold]fd[/bold]: federated distillation for open foundation models.\n\n"
         "Institutions share compressed logits on a public proxy set ([i]logit bundles[/i]), "
         "never data or weights. Everything works offline.",
    epilog="Exit codes: " + EXIT_CODES + " [bold]fd COMMAND --help[/bold] shows a command's "
           "options and examples.",
    cls=FdGroup,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"fd {__version__}", highlight=False)
        raise typer.Exit()


#: the commands that run under several processes (torchrun, accelerate launch; docs/scaling.md)
MULTI_PROCESS = ("train-specialist", "emit-logits", "aggregate", "distill", "evaluate")


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print fd's version and exit.")]
    = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show other libraries' progress bars and reports "
                                "(transformers, datasets).")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only results and errors.")] = False,
) -> None:
    """fd: federated distillation for open foundation models."""
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet exclude each other")
    configure_output(verbose=verbose, quiet=quiet)
    with reporting_errors():
        world = ranks().world
        if ctx.invoked_subcommand not in MULTI_PROCESS and world > 1:
            # every process would write the same output
            raise ValueError(f"fd {ctx.invoked_subcommand} runs in one process, but "
                             f"WORLD_SIZE={world} (torchrun or accelerate launch); run it "
                             f"without the launcher (only {', '.join(MULTI_PROCESS)} scale "
                             "out)")


from . import stages, simulate, bundles, data  # noqa: E402,F401,I001  (they add commands, in this order)


def main() -> None:
    """Console entry point (``fd``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    app()


if __name__ == "__main__":
    sys.exit(main())

