"""What a task is: the commands it supports, the options each takes with its defaults, and the
library function each runs.

This module and the task declarations import nothing heavy (no torch, no transformers): the
command line reads them to build its help, to refuse options a task does not take, and to
infer the task from the files it is given. The library functions are imported only when a
command runs (:meth:`Task.function`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable, Mapping

from ..errors import FdError

#: the commands a task may support, in the order the help lists them
COMMANDS = ("train-specialist", "emit-logits", "aggregate", "distill", "evaluate", "simulate")


@dataclass(frozen=True)
class Auto:
    """A default decided at run time from the inputs (the library receives None), with the
    words the help shows for it."""

    says: str

    def __str__(self) -> str:
        return self.says


@dataclass(frozen=True)
class Command:
    """One command of a task: the library function it runs (``"module:function"``, imported
    on first use) and the options it takes, library keyword -> default (:class:`Auto` for a
    default decided at run time). An option of the command line that a task's command does
    not list is refused for that task, with the reason ``refused`` gives for it, if any."""

    function: str
    options: Mapping[str, Any]
    refused: Mapping[str, str] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """The options' defaults as the library receives them."""
        return {k: (None if isinstance(v, Auto) else v) for k, v in self.options.items()}


@dataclass(frozen=True)
class Task:
    """A task (classification, causal-lm, ...): its name, a line that says what it is, its
    commands, and how its files are recognised.

    ``bundle_task`` is the ``task`` its bundles' manifests carry (token tasks share
    ``token`` and tell themselves apart by ``producer.config.task``). ``architectures`` are
    endings of transformers class names (``config.json``'s ``architectures``) that mean this
    task. ``any_model``: the task can use a model folder of any task (an encoder's
    embeddings can be taken from a classifier or a language model)."""

    name: str
    summary: str
    commands: Mapping[str, Command]
    bundle_task: str
    architectures: tuple[str, ...] = ()
    any_model: bool = False
    #: tasks whose models this task may start from (a language model's weights under a
    #: classification head, as transformers' ...ForSequenceClassification loads them)
    bases: tuple[str, ...] = ()
    tables: str | None = None  # "module:function" printing fd simulate's results

    def command(self, name: str) -> Command:
        """The declaration of command ``name``; a command the task does not support is
        refused by name."""
        if name not in self.commands:
            supported = ", ".join(c for c in COMMANDS if c in self.commands)
            raise FdError(f"fd {name} does not support --task {self.name} (it supports: "
                          f"{supported})")
        return self.commands[name]

    def function(self, name: str) -> Callable[..., Any]:
        """The library function behind command ``name`` (imported now)."""
        return resolve(self.command(name).function)


def resolve(spec: str) -> Callable[..., Any]:
    """``"module:function"`` -> the function."""
    module, attr = spec.split(":")
    return getattr(import_module(module), attr)
