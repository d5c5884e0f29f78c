"""The ``fd`` command group: fd, not click, checks the paths a command reads, so that exit code
2 means only a bad invocation (an unknown option, a missing argument, a value of the wrong
type) and every problem with a file or folder is fd's one-line ``error:`` and exit 1.

Click's ``Path`` type refuses an existing path it cannot read with a usage error (exit 2);
:class:`FdGroup` turns that check off on every path parameter and runs :func:`check_inputs`
before the command instead. A path that does not exist is left to the library, whose message
says what it expected there (a bundle folder, a dataset, a model folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from ..console import ERROR, err, plain

#: exit codes, as ``fd --help`` and the README state them
EXIT_CODES = ("0: done; 1: a problem with a file, folder, bundle, model or value, reported "
              "as one 'error:' line; 2: a bad invocation (an unknown option, a missing "
              "argument, a value of the wrong type).")


def is_output(param: click.Parameter) -> bool:
    """``--out``/``-o``: the paths a command writes, which need not exist yet."""
    return "--out" in getattr(param, "opts", ())


def unreadable(path: Path) -> str | None:
    """Why fd cannot read ``path`` (a folder must also be searchable), or None. A path that
    does not exist is not fd's business here."""
    if not os.path.lexists(path):
        return None
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            return "a folder fd may not read (permission denied)"
    elif not os.access(path, os.R_OK):
        return "a file fd may not read (permission denied)"
    return None


def check_inputs(command: click.Command, values: dict) -> None:
    """Refuse, with fd's message and exit 1, any input path of ``command`` it cannot read."""
    for param in command.params:
        if not isinstance(param.type, click.Path) or is_output(param):
            continue
        given = values.get(param.name)
        for path in given if isinstance(given, (list, tuple)) else [given]:
            if path is None:
                continue
            why = unreadable(Path(path))
            if why:
                name = param.opts[0] if param.opts[0].startswith("-") else param.human_readable_name
                err.print(ERROR + plain(f"{path}: {why}; fd reads it as {name}. Give fd read "
                                        "access (chmod, or run as its owner) or pass another "
                                        "path."), highlight=False, soft_wrap=True)
                raise typer.Exit(1)


class FdGroup(TyperGroup):
    """Typer's group, with fd's path checks on every command (see the module's note)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None or getattr(command, "fd_checked", False):
            return command
        for param in command.params:
            if isinstance(param.type, click.Path):
                param.type.readable = False  # fd checks, in check_inputs
        inner = command.callback

        def checked(**kwargs):
            check_inputs(command, kwargs)
            return inner(**kwargs)

        command.callback = checked
        command.fd_checked = True
        return command
