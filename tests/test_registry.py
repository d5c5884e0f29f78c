"""The task registry: every option of every task-dependent command is applied or refused for
every task, the library functions carry the defaults the registry (and so the help) shows,
the task is inferred from the files, and a new task is one declaration."""

from __future__ import annotations

import inspect
import os
import json

import click
import pytest

from fdcli.cli import app
from fdcli.cli import dispatch
from fdcli.errors import FdError
from fdcli.rule_options import RULE_OPTIONS
from fdcli.tasks import (COMMANDS, TASKS, Auto, Command, Task, choose_task, task_of_bundle,
                         task_of_model)
from fdcli.tasks.base import Task as TaskClass

from .helpers import fd

#: positional arguments of each command, which every task takes
POSITIONAL = {"train-specialist": ["data.csv", "--model", "model"],
              "emit-logits": ["model", "proxy.csv"], "aggregate": ["bundle"],
              "distill": ["student", "proxy.csv", "teacher"], "evaluate": ["model", "data.csv"],
              "simulate": []}
#: a value for an option of each click type
SAMPLES = {"INTEGER": "7", "FLOAT": "0.37", "TEXT": "x", "PATH": "somewhere"}
SPECIAL = {"proxy_slice": "1/2", "limits": "max_classes=5", "fedavg_tune_lrs": "1e-3,2e-3",
           "fedavg_tune_epochs": "1,3", "dp_epsilons": "1,4"}


def click_command(name: str) -> click.Command:
    return typer_click().commands[name]


def typer_click() -> click.Group:
    import typer.main

    return typer.main.get_command(app)


def task_options(command: str):
    """The command's options that depend on the task: all but the output, --task, --json,
    --overwrite and the positional arguments."""
    for param in click_command(command).params:
        if isinstance(param, click.Option) and param.name not in dispatch.COMMON \
                and not param.required:
            yield param


def argv_for(param: click.Option) -> list[str]:
    if param.is_flag and param.secondary_opts:
        return [param.secondary_opts[0]]  # --no-packing: a value other than the default
    if param.is_flag:
        return [param.opts[0]]
    value = SPECIAL.get(param.name) or SAMPLES.get(param.type.name.upper(), "x")
    return [param.opts[0], value]


@pytest.fixture
def recorder(monkeypatch):
    """Stand in for every library function: record the keywords it gets, then stop."""
    calls = []

    def function(self, name):
        def record(*args, **kwargs):
            calls.append((self.name, name, args, kwargs))
            raise FdError("recorded")
        return record

    monkeypatch.setattr(TaskClass, "function", function)
    for name in ("trusted_keys", "sign_key", "dtype", "limits"):  # they would read files
        monkeypatch.setitem(dispatch.CONVERT, name, lambda v: v)
    return calls


def invoke(*args):
    return fd(*args, env={"COLUMNS": "200"})


def out(command: str) -> list[str]:
    return [] if command == "evaluate" else ["--out", "o"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_applied_or_refused_for_every_task(command, recorder, tmp_path,
                                                           monkeypatch):
    """For each task: every option its command declares, given at once, reaches the library
    function with the value given (and every declared option reaches it, the rest at their
    defaults); every other option, given at once, is refused, each named, and nothing runs.
    A task without the command is refused by name."""
    monkeypatch.chdir(tmp_path)
    params = list(task_options(command))
    for task in TASKS.values():
        base = [command, *POSITIONAL[command], "--task", task.name, *out(command)]
        if command not in task.commands:
            result = invoke(*base)
            assert result.exit_code == 1
            assert f"fd {command} does not support --task {task.name}" in result.output
            continue
        declared = task.commands[command].options
        taken = [p for p in params if p.name in declared]
        foreign = [p for p in params if p.name not in declared]
        # aggregate: a rule's options go with that rule (the rule check comes first)
        batches = [[p for p in taken if p.name not in RULE_OPTIONS]]
        if command == "aggregate":
            batches += [[p] for p in taken if p.name in RULE_OPTIONS]
        for batch in batches:
            recorder.clear()
            rule = ["--rule", RULE_OPTIONS[batch[0].name][0]] if command == "aggregate" and \
                batch and batch[0].name in RULE_OPTIONS else []
            result = invoke(*base, *rule, *[a for p in batch for a in argv_for(p)])
            assert result.exit_code == 1 and "recorded" in result.output, (task.name,
                                                                           result.output)
            (_, name, _, kwargs), = recorder
            assert name == command and set(declared) <= set(kwargs)
            for p in batch:
                assert p.is_flag or kwargs[p.name] not in (None, declared[p.name]), \
                    (task.name, p.name, kwargs[p.name])
        if foreign:
            recorder.clear()
            result = invoke(*base, *[a for p in foreign for a in argv_for(p)])
            message = " ".join(result.output.split())
            assert result.exit_code == 1 and recorder == [], (task.name, message)
            verb = "does" if len(foreign) == 1 else "do"
            named = ", ".join(p.opts[0] for p in foreign)
            assert f"fd {command}: {named} {verb} not apply to --task {task.name}" in \
                message, message


def test_rule_options_are_refused_with_another_rule(recorder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("aggregate", "bundle", "--rule", "mean", "--tau", "0.5", "--trim", "0.1",
                    "--out", "o")
    assert result.exit_code == 1
    assert ("fd aggregate: --tau, --trim do not apply to --rule mean"
            in " ".join(result.output.split()))
    assert recorder == []
    result = invoke("aggregate", "bundle", "--tau", "0.5", "--out", "o")  # confidence: default
    assert "recorded" in result.output and recorder[0][3]["tau"] == 0.5


def test_library_defaults_agree_with_the_registry():
    """What the help shows as a default is what a library caller gets."""
    import fdcli.tasks.base as base
    from importlib import import_module

    for task in TASKS.values():
        for command, declaration in task.commands.items():
            module, attr = declaration.function.split(":")
            params = inspect.signature(getattr(import_module(module), attr)).parameters
            for option, default in declaration.options.items():
                assert option in params, (task.name, command, option)
                lib = params[option].default
                if option in ("limits",):
                    continue  # None on the command line is the library's DEFAULT_LIMITS
                want = None if isinstance(default, base.Auto) else default
                if isinstance(lib, (list, tuple)):
                    lib = tuple(lib)
                assert lib == want, (task.name, command, option, lib, want)


def test_help_states_which_tasks_take_an_option_and_their_defaults():
    result = invoke("emit-logits", "--help")
    text = " ".join(result.output.replace("│", " ").split())
    assert ("--draws INTEGER sample: ids drawn per token. Tasks: causal-lm, seq2seq. Default: "
            "8 for sample.") in text
    assert ("--k INTEGER topk: ids (or anchors) kept per row. Default: classification: 16; "
            "causal-lm, seq2seq: 16 for topk; embedding: 64.") in text
    assert ("for the coverage rule. This discloses the client's class mix. Tasks: "
            "classification.") in text


def write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_the_task_is_inferred_from_the_files(tmp_path):
    write(tmp_path / "spec" / "fd.json", {"task": "seq2seq"})
    assert task_of_model(tmp_path / "spec") == ("seq2seq", str(tmp_path / "spec" / "fd.json"))
    for arch, task in (("GPT2LMHeadModel", "causal-lm"), ("LlamaForCausalLM", "causal-lm"),
                       ("T5ForConditionalGeneration", "seq2seq"),
                       ("BertForSequenceClassification", "classification"),
                       ("ViTForImageClassification", "classification")):
        write(tmp_path / arch / "config.json", {"architectures": [arch]})
        assert task_of_model(tmp_path / arch)[0] == task
    assert task_of_model(write(tmp_path / "lm.json", {"model_type": "gpt2", "architectures":
                                                      ["GPT2LMHeadModel"]}))[0] == "causal-lm"
    assert task_of_model(write(tmp_path / "plain.json", {"model_type": "bert"})) is None
    write(tmp_path / "b" / "manifest.json", {"task": "token", "producer": {
        "config": {"task": "seq2seq"}}})
    assert task_of_bundle(tmp_path / "b")[0] == "seq2seq"
    write(tmp_path / "c" / "manifest.json", {"task": "token", "producer": {}})
    assert task_of_bundle(tmp_path / "c")[0] == "causal-lm"
    write(tmp_path / "e" / "manifest.json", {"task": "embedding"})
    assert task_of_bundle(tmp_path / "e")[0] == "embedding"
    assert task_of_bundle(tmp_path / "nothing") is None


def test_a_contradiction_names_both_and_embedding_takes_any_model():
    found = ("classification", "spec/fd.json")
    assert choose_task(None, found).name == "classification"
    assert choose_task(None, None).name == "classification"
    assert choose_task("embedding", found).name == "embedding"  # a classifier's backbone
    with pytest.raises(FdError, match=r"--task causal-lm contradicts spec/fd.json, which says "
                                      r"classification"):
        choose_task("causal-lm", found)
    with pytest.raises(FdError, match="contradicts"):  # a bundle is what it is
        choose_task("embedding", ("causal-lm", "b/manifest.json"), model=False)
    with pytest.raises(FdError, match="--task must be one of classification, causal-lm, "
                                      "seq2seq, embedding; got 'nope'"):
        choose_task("nope", None)


def toy_evaluate(model, data, *, batch_size=4, seed=0):
    """A fifth task's evaluate: counts the lines of DATA."""
    lines = len(open(data).read().splitlines())
    return {"model": str(model), "lines": lines, "batch_size": batch_size, "seed": seed}


def test_a_fifth_task_is_one_declaration(tmp_path, monkeypatch):
    """A toy task declared here (its package would be fdcli/tasks/toy/) needs nothing outside
    its declaration but its line in TASKS."""
    toy = Task(name="toy", summary="counts lines", bundle_task="toy", commands={
        "evaluate": Command("tests.test_registry:toy_evaluate",
                            {"batch_size": 4, "seed": Auto("zero")})})
    monkeypatch.setitem(TASKS, "toy", toy)
    (tmp_path / "d.txt").write_text("a\nb\nc\n")
    result = invoke("evaluate", tmp_path / "m", tmp_path / "d.txt", "--task", "toy",
                    "--batch-size", 9, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"model": str(tmp_path / "m"), "lines": 3,
                                         "batch_size": 9, "seed": None}
    result = invoke("evaluate", tmp_path / "m", tmp_path / "d.txt", "--task", "toy", "--knn",
                    3)
    assert result.exit_code == 1 and "--knn does not apply to --task toy" in result.output
    result = invoke("train-specialist", tmp_path / "d.txt", "--model", tmp_path / "m",
                    "--task", "toy", "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "fd train-specialist does not support --task toy (it supports: evaluate)" in \
        " ".join(result.output.split())


def test_inference_reads_hostile_files_as_bundles_are_read(tmp_path):
    """The manifest or config.json read to infer the task is bounded like a bundle's: a FIFO
    is not opened (it would block), a symlink is not followed, a deep or huge file is not
    parsed; inference then says nothing and the stage reports the file."""
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "manifest.json")
    assert task_of_bundle(fifo) is None  # returns at once instead of blocking on the FIFO
    link = tmp_path / "link"
    link.mkdir()
    write(tmp_path / "real.json", {"task": "embedding"})
    os.symlink(tmp_path / "real.json", link / "manifest.json")
    assert task_of_bundle(link) is None
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "config.json").write_text("[" * 5000 + "]" * 5000)
    assert task_of_model(deep) is None
    big = tmp_path / "big"
    big.mkdir()
    (big / "manifest.json").write_text(json.dumps({"task": "embedding", "pad": "x" * 9_000_000}))
    assert task_of_bundle(big) is None
    result = invoke("aggregate", fifo, "--out", tmp_path / "t")
    assert result.exit_code == 1 and "manifest.json: is a FIFO (named pipe); expected a " \
        "regular file" in " ".join(result.output.split())
