"""How a task-dependent command runs: the task chosen (``--task``, or what the files say),
the options the user gave checked against what that task's command takes, the declared
defaults filled in, and the library function the registry names called.

The command line knows no task by name: everything task-specific comes from
:mod:`fdcli.tasks`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import click
from rich.markup import escape

from ..errors import FdError
from ..tasks import TASKS, Auto, Task
from . import options as opts

#: options every command takes whatever the task: where to write, and how to print
COMMON = frozenset({"out_dir", "overwrite", "json_out", "task"})


def _commas(value):
    return value if value is None or not isinstance(value, str) else \
        [v for v in value.split(",") if v]


#: how an option's command-line form becomes the library's argument (applied to defaults too)
CONVERT: dict[str, Callable[[Any], Any]] = {
    "labels": _commas, "architectures": _commas, "compare_rules": _commas, "banks": _commas,
    "baselines": _commas, "references": lambda v: tuple(v or ()),
    "proxy_slice": opts.proxy_slice, "limits": opts.limits, "trusted_keys": opts.trusted,
    "sign_key": opts.sign_key, "dtype": opts.dtype, "sharpen": opts.sharpening,
    "fedavg_tune_lrs": opts.numbers("--fedavg-tune-lrs"),
    "fedavg_tune_epochs": opts.numbers("--fedavg-tune-epochs"),
    "dp_epsilons": opts.numbers("--dp-epsilons"),
}


def flag(ctx: click.Context, name: str) -> str:
    """The command-line spelling of parameter ``name`` (``learning_rate`` is ``--lr``)."""
    for param in ctx.command.params:
        if param.name == name:
            return param.opts[0]
    return "--" + name.replace("_", "-")


def given(ctx: click.Context) -> dict[str, Any]:
    """The options the user set on the command line (or through the environment): what is
    not given takes the task's declared default."""
    sources = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    inputs = {p.name for p in ctx.command.params  # the files every task takes
              if isinstance(p, click.Argument) or p.required}
    return {name: value for name, value in ctx.params.items()
            if ctx.get_parameter_source(name) in sources and name not in inputs}


def refuse_foreign(ctx: click.Context, command: str, chosen: Mapping[str, Any],
                   takes: Mapping[str, Any], why: str,
                   reasons: Mapping[str, str] | None = None) -> None:
    """One error naming every option in ``chosen`` that ``takes`` does not list, with the
    ``reasons`` given for any of them."""
    names = [n for n in chosen if n not in takes and n not in COMMON]
    if names:
        told = "".join(f" ({flag(ctx, n)}: {(reasons or {})[n]})" for n in names
                       if n in (reasons or {}))
        raise FdError(f"fd {command}: {', '.join(flag(ctx, n) for n in names)} "
                      f"{'does' if len(names) == 1 else 'do'} not apply {why}{told}; "
                      f"see fd {command} --help for which task takes which option")


def run(ctx: click.Context, command: str, task: Task, *args: Any, **fixed: Any) -> Any:
    """Call ``task``'s library function for ``command`` with the positional ``args``, the
    ``fixed`` keywords (output, overwrite, progress), the options the user gave, and the
    task's declared defaults for the rest; an option the task does not take is refused."""
    declared = task.command(command)
    chosen = {k: v for k, v in given(ctx).items() if k not in fixed and k not in COMMON}
    refuse_foreign(ctx, command, chosen, declared.options, f"to --task {task.name}",
                   declared.refused)
    return task.function(command)(*args, **library_options(task, command, chosen), **fixed)


def library_options(task: Task, command: str, chosen: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``task``'s library function for ``command``: its declared defaults with
    the ``chosen`` options (already checked) applied, each converted from its command-line
    form (:data:`CONVERT`)."""
    kwargs = {**task.command(command).defaults(), **chosen}
    for name, convert in CONVERT.items():
        if name in kwargs:
            kwargs[name] = convert(kwargs[name])
    return kwargs


def task_help(command: str, option: str, text: str) -> str:
    """``text`` followed by which tasks' ``command`` takes ``option`` and each one's
    default, from the registry (the one place they are declared)."""
    takers = [t for t in TASKS.values()
              if command in t.commands and option in t.commands[command].options]
    if not takers:
        raise KeyError(f"no task's {command} takes {option!r}")  # a bug in the CLI
    groups: dict[str, list[str]] = {}
    for t in takers:
        default = t.commands[command].options[option]
        groups.setdefault(_shown(default), []).append(t.name)
    supporting = [t for t in TASKS.values() if command in t.commands]
    who = "" if len(takers) == len(supporting) else \
        f" Tasks: {', '.join(t.name for t in takers)}."
    if len(groups) == 1:
        (shown, _), = groups.items()
        tail = f" Default: {shown}." if shown else ""
    else:
        tail = " Default: " + "; ".join(f"{', '.join(names)}: {shown or 'none'}"
                                        for shown, names in groups.items()) + "."
    return escape(f"{text}{who}{tail}")


def _shown(default: Any) -> str:
    if isinstance(default, Auto):
        return str(default)
    if default is None or default is False or default == ():
        return ""
    if default is True:
        return "on"
    if isinstance(default, (tuple, list)):
        return ",".join(map(str, default))
    return str(default)

