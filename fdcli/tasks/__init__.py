"""The task registry: ``TASKS = {name: Task}``, and the task a command's files imply.

Every command of ``fd`` that depends on the task (train-specialist, emit-logits, aggregate,
distill, evaluate, simulate) looks the task up here, takes its options' defaults from its
declaration and runs the library function it names; the command line names no task. Adding
a task is a package beside these four and one line in ``TASKS`` (docs/architecture.md).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FdError
from ..meta import FD_META, FdMeta
from .base import COMMANDS, Auto, Command, Task
from .causal_lm import TASK as CAUSAL_LM
from .classification import TASK as CLASSIFICATION
from .embedding import TASK as EMBEDDING
from .seq2seq import TASK as SEQ2SEQ

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, CAUSAL_LM, SEQ2SEQ, EMBEDDING)}
#: the task of a command whose files say nothing (a config file, fd simulate)
DEFAULT_TASK = CLASSIFICATION.name

__all__ = ["COMMANDS", "DEFAULT_TASK", "TASKS", "Auto", "Command", "Task", "get_task",
           "choose_task", "task_of_model", "task_of_bundle"]


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is refused with the known ones."""
    if name not in TASKS:
        raise FdError(f"--task must be one of {', '.join(TASKS)}; got {name!r}")
    return TASKS[name]


def _json(path: Path, limits=None) -> Any:
    """The parsed JSON of a small file, read as a bundle's manifest is (no symlink or FIFO,
    bounded size, depth and string length; :mod:`fdcli.bundle.safeio`), or None when that
    fails: the stage that then reads the file reports why, within the user's limits."""
    from ..bundle.safeio import DEFAULT_LIMITS, parse_json, read_regular

    limits = limits or DEFAULT_LIMITS
    try:
        return parse_json(read_regular(path, limits.max_manifest_bytes, "max_manifest_bytes"),
                          path, limits)
    except (OSError, FdError):
        return None


def _by_architecture(config: Any) -> str | None:
    if not isinstance(config, dict):
        return None
    names = config.get("architectures")
    for name in names if isinstance(names, list) else []:
        for task in TASKS.values():
            if isinstance(name, str) and name.endswith(task.architectures):
                return task.name
    return None


#: peft's ``task_type`` -> fd's task
PEFT_TASKS = {"CAUSAL_LM": "causal-lm", "SEQ_2_SEQ_LM": "seq2seq", "SEQ_CLS": "classification"}


def task_of_model(path: str | Path) -> tuple[str, str] | None:
    """``(task, where)`` as a model's files state it: the ``task`` in a model folder's
    ``fd.json``, else the class names in its ``config.json`` (or in a JSON config file):
    ``...ForCausalLM`` is causal-lm, ``...ForConditionalGeneration`` seq2seq,
    ``...ForSequenceClassification`` classification; an adapter folder's ``task_type`` in
    ``adapter_config.json``; a GGUF file is causal-lm (llama.cpp's checkpoints are decoder
    LMs); None when they say nothing."""
    path = Path(path)
    if path.is_dir():
        meta = FdMeta.read(path)  # checked: a hostile fd.json is refused here, by field
        if meta is not None and meta.task is not None:
            return meta.task, str(path / FD_META)
        found = _by_architecture(_json(path / "config.json"))
        if found is None:  # a peft adapter folder
            adapter = _json(path / "adapter_config.json")
            found = PEFT_TASKS.get(adapter.get("task_type")) if isinstance(adapter, dict) \
                else None
            return (found, str(path / "adapter_config.json")) if found else None
        return found, str(path / "config.json")
    if path.suffix.lower() == ".gguf":
        return CAUSAL_LM.name, f"{path} (a GGUF file)"
    if path.suffix == ".json":
        found = _by_architecture(_json(path))
        return (found, str(path)) if found else None
    return None


def task_of_bundle(path: str | Path, limits=None) -> tuple[str, str] | None:
    """``(task, where)`` from a bundle's ``manifest.json``: its ``task``, and for a token
    bundle the ``producer.config.task`` it was emitted for (causal-lm when unsaid; None
    when it names no task fd knows, for the stage to report). ``limits``: the reading
    limits of :mod:`fdcli.bundle.safeio` (the defaults when None)."""
    where = Path(path) / "manifest.json"
    manifest = _json(where, limits)
    if not isinstance(manifest, dict):
        return None
    kind = manifest.get("task")
    if kind == "token":
        producer = manifest.get("producer")
        config = producer.get("config") if isinstance(producer, dict) else None
        made = config.get("task") if isinstance(config, dict) else None
        if made is None:  # bundles from before token tasks recorded it
            return CAUSAL_LM.name, str(where)
        return (made, str(where)) if made in TASKS else None  # the stage names what is wrong
    for task in TASKS.values():
        if task.bundle_task == kind:
            return task.name, str(where)
    return None


def choose_task(given: str | None, found: tuple[str, str] | None, *,
                model: bool = True) -> Task:
    """The task of a command: ``given`` (``--task``) when the files say nothing or agree,
    else what the files say (``found``: ``(task, where)``); a contradiction is refused,
    naming both. A task that can use any model (embedding), or models of its ``bases``
    (classification on a causal LM), may be given for a model of that task (``model``:
    ``found`` describes a model, not a bundle)."""
    if given is not None:
        task = get_task(given)
        if found is None or found[0] == task.name or (
                model and (task.any_model or found[0] in task.bases)):
            return task
        raise FdError(f"--task {given} contradicts {found[1]}, which says {found[0]}; "
                      f"drop --task, or give files made for {given}")
    return TASKS[found[0]] if found else TASKS[DEFAULT_TASK]
