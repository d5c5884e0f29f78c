"""What the ``fd`` commands print, and how: every string that comes from a bundle or a path
goes out as plain text (:func:`plain`), errors as one line on stderr (:func:`reporting_errors`).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import FdError, FdWarning

out = Console()
err = Console(stderr=True, soft_wrap=True)

#: set by ``fd --quiet``: print only results and errors
QUIET = False

#: the console width when stdout is a file, a pipe or a CI log and COLUMNS is not set: tables
#: take their natural width there rather than wrapping their cells at rich's 80 columns
UNWRAPPED = 10_000

#: the libraries' own switches for their progress bars and reports (read when they are
#: imported; fd imports them lazily, after :func:`configure_output`)
LIBRARY_SWITCHES = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                     "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "DATASETS_VERBOSITY": "error"}


def configure_output(verbose: bool = False, quiet: bool = False) -> None:
    """fd owns its output: other libraries' progress bars and load reports stay silent unless
    ``verbose`` (a variable the user set is left as it is); ``quiet`` also silences fd's
    progress bars, log lines and warnings, leaving results and errors. Printed to anything
    but a terminal, fd's tables do not wrap (:data:`UNWRAPPED`)."""
    global QUIET
    from . import progress

    QUIET = quiet
    progress.ENABLED = not quiet
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = UNWRAPPED
    if verbose:
        return
    for key, value in LIBRARY_SWITCHES.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:  # imported already (fd used as a library, or tests)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()


def log(prefix: str, message: str) -> None:
    """One of fd's own log lines on stderr (``PREFIX: message``), unless ``--quiet``."""
    if not QUIET:
        err.print(Text(f"{prefix}: ", style="dim") + plain(message), highlight=False)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn an FdError (or a ValueError from a library parameter check) into a message on
    stderr and exit code 1, and print every FdWarning to stderr as ``warning: ...``."""
    import warnings

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, FdWarning):
                if not QUIET:
                    err.print(WARNING + plain(str(message)), highlight=False, soft_wrap=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.simplefilter("always", FdWarning)
        warnings.showwarning = show
        try:
            yield
        except (FdError, ValueError) as exc:
            err.print(ERROR + plain(str(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # permissions, a full disk, a vanished file: one line
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(ERROR + plain(f"{where}{exc.strerror or exc}"), highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None


ERROR = Text("error: ", style="bold red")
WARNING = Text("warning: ", style="bold yellow")


def plain(message: str) -> Text:
    """A message as literal text: its strings may come from another institution's bundle, so
    rich markup in them is not interpreted and control characters (terminal escape sequences)
    are shown escaped, as ``\\x1b``."""
    return Text("".join(c if c == "\n" or c.isprintable() else ascii(c)[1:-1]
                        for c in message))



def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"



def report(result: dict, json_out: bool, title: str, keys: list[str] | None = None) -> None:
    """A command's result on stdout, as a table or JSON; under several processes of one
    launch (torchrun, accelerate launch) only process 0 reports."""
    from .launch import ranks

    if not ranks().main:
        return
    if json_out:
        print_json(result)
        return
    table = Table(title=plain(title), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in keys or list(result):
        value = result.get(key)
        table.add_row(plain(key), plain(f"{value:.4f}" if isinstance(value, float)
                                        else str(value)))
    out.print(table)


def print_json(value) -> None:
    """JSON on stdout, written as plain text (strings from bundles are JSON-escaped, never
    read as markup)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str, ensure_ascii=True) + "\n")

