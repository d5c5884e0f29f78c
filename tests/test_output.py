"""What a newcomer sees: fast light commands that import no heavy library, fd's own output
only (third-party bars and reports behind --verbose, everything but results behind --quiet),
no out-of-vocabulary special ids, no tokenizer length warning where fd cuts blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fdcli.bundle import DenseCodec, write_bundle

from .test_pipeline import LABELS, make_csv, run, text_recipe

PROBE = """
import sys
from fdcli.cli import main
sys.argv = ["fd", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in ("torch", "transformers", "datasets", "flwr")
                          if m in sys.modules))
"""


def _heavy(*args) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    line = next(x for x in out.splitlines() if x.startswith("HEAVY:"))
    return [m for m in line[6:].split(",") if m]


def test_light_commands_import_no_heavy_library(tmp_path):
    write_bundle(tmp_path / "b", torch.arange(4), torch.randn(4, 3), codec=DenseCodec(),
                 task="classification", num_classes=3, label_names=["a", "b", "c"],
                 proxy_fingerprint="sha256:" + "ab" * 32, client_id="c",
                 model_fingerprint="sha256:" + "cd" * 32)
    assert _heavy("--version") == []
    assert _heavy("--help") == []
    assert _heavy("aggregate", "--help") == []
    # reading bundles needs torch (the codecs), never transformers, datasets or flwr
    assert _heavy("inspect", tmp_path / "b") == ["torch"]
    assert _heavy("verify", tmp_path / "b") == ["torch"]


def test_the_library_resolves_its_names_lazily():
    code = ("import sys, fdcli; assert 'torch' not in sys.modules; "
            "from fdcli import read_bundle, aggregate, FdError, simulate_lm; "
            "assert 'torch' in sys.modules and callable(aggregate); "
            "print(sorted(set(fdcli.__all__) - set(dir(fdcli))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    import fdcli

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        fdcli.nope  # noqa: B018


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    text_recipe(root, 60, seed=5, layers=1)
    make_csv(root / "train.csv", 40, seed=6)
    return root


def _fd(*args) -> subprocess.CompletedProcess:
    """The ``fd`` entry point in a child process, as a user runs it: without the libraries'
    output switches that earlier in-process commands of this test session set."""
    from fdcli.console import LIBRARY_SWITCHES

    env = {k: v for k, v in os.environ.items() if k not in LIBRARY_SWITCHES}
    return subprocess.run([sys.executable, "-c", "from fdcli.cli import main; main()",
                           *map(str, args)], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"})


def test_other_libraries_stay_silent_unless_verbose(tiny, tmp_path):
    common = ["train-specialist", tiny / "train.csv", "--model", tiny / "bert.json",
              "--tokenizer", tiny / "tokenizer", "--labels", ",".join(LABELS), "--epochs", 1]
    quiet = _fd(*common, "--out", tmp_path / "a")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "", quiet.stderr  # nothing but fd's own (none here)
    loud = _fd("--verbose", *common, "--out", tmp_path / "b")
    assert loud.returncode == 0, loud.stderr
    assert "Writing model shards" in loud.stderr  # transformers' bar, shown on request
    both = _fd("--verbose", "--quiet", "verify", tmp_path)
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_quiet_leaves_only_results_and_errors(tmp_path):
    result = run("--quiet", "simulate", "--out", tmp_path / "sim", "--num-clients", 2,
                 "--epochs", 1, "--distill-epochs", 1, "--rounds", 1, "--compare-rules", "",
                 "--baselines", "", "--no-privacy", "--json")
    assert result.exit_code == 0, result.output
    assert "fd simulate:" not in result.stderr
    assert json.loads(result.stdout)["student"]["architecture"] == "resnet"
    result = run("--quiet", "verify", tmp_path / "nowhere")
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    run("simulate", "--help")  # a later command without --quiet logs again
    from fdcli import console

    console.configure_output()
    assert not console.QUIET


def test_config_lm_takes_special_ids_from_its_tokenizer(tiny):
    from fdcli.lm import load_lm

    gpt2 = tiny / "gpt2.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2,
                                "n_positions": 32}))
    lm = load_lm(gpt2, tokenizer=tiny / "tokenizer")  # a WordPiece tokenizer: no bos/eos
    assert lm.tokenizer.bos_token_id is None and lm.tokenizer.eos_token_id is None
    assert lm.model.config.bos_token_id is None and lm.model.config.eos_token_id is None
    assert lm.model.config.pad_token_id == lm.tokenizer.pad_token_id
    assert lm.model.config.vocab_size == len(lm.tokenizer)


def test_no_length_warning_where_fd_cuts_blocks(tiny, capfd):
    import datasets
    from transformers import AutoTokenizer

    from fdcli.lm import text_blocks

    tok = AutoTokenizer.from_pretrained(str(tiny / "tokenizer"))
    tok.model_max_length = 8  # the documents are far longer
    ds = datasets.Dataset.from_dict({"text": [" ".join(LABELS * 40)]})
    blocks = text_blocks(ds, "proxy", tok, max_length=8, packing=True)
    assert len(blocks.blocks) > 5
    assert "Token indices sequence length" not in capfd.readouterr().err


def test_every_command_has_a_one_line_summary_in_fd_help():
    from typer.main import get_command

    from fdcli.cli import app

    group = get_command(app)
    result = run("--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    listed = {}
    for line in result.stdout.splitlines():
        words = line.strip("│ ").split(maxsplit=1)
        if words and words[0] in group.commands:
            listed[words[0]] = words[1].strip(" │") if len(words) > 1 else ""
    assert set(listed) == set(group.commands)
    for name, command in group.commands.items():
        assert command.short_help and len(command.short_help) <= 58, name  # 80 columns in all
        assert listed[name] == command.short_help, name  # whole, on the command's own line
        assert "--json" in {o for p in command.params for o in getattr(p, "opts", [])}, name
    assert "Exit codes: 0: done; 1: a problem with a file" in " ".join(result.stdout.split())


def _deny(monkeypatch, *denied):
    """``os.access`` as for a user who may not read ``denied`` (tests run as root here)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: (
        False if any(str(path) == str(d) for d in denied) else real(path, mode, *a, **k)))


@pytest.mark.parametrize("args", [
    ["verify", "{b}"], ["inspect", "{b}"], ["aggregate", "{b}", "--out", "{tmp}/t"],
    ["emit-logits", "{tmp}/model", "{b}", "--out", "{tmp}/e"],
    ["train-specialist", "{tmp}/data.csv", "--model", "{tmp}/model", "--teacher", "{b}",
     "--proxy", "{tmp}/p.csv", "--out", "{tmp}/s"],
])
def test_an_unreadable_path_is_fds_error_with_exit_1(tmp_path, monkeypatch, args):
    bundle = tmp_path / "b"
    bundle.mkdir()
    _deny(monkeypatch, bundle)
    result = run(*[a.format(b=bundle, tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {bundle}: a folder fd may not read (permission "
                                    "denied); fd reads it as "), result.stderr
    assert "Usage:" not in result.output and not (tmp_path / "t").exists()


def test_exit_2_only_for_a_bad_invocation(tmp_path, monkeypatch):
    data = tmp_path / "data.csv"
    data.write_text("text,label\na,x\n")
    _deny(monkeypatch, data)
    result = run("partition", data, "--out", tmp_path / "p")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {data}: a file fd may not read (permission "
                                    "denied); fd reads it as DATA.")
    missing = run("verify", tmp_path / "nowhere")
    assert missing.exit_code == 1 and missing.stderr.startswith(
        f"error: {tmp_path / 'nowhere'}: not a folder")
    assert run("verify", tmp_path, "--bogus").exit_code == 2  # an unknown option
    assert run("verify").exit_code == 2  # a missing argument
    assert run("partition", data, "--out", tmp_path / "p", "--num-clients", "x").exit_code == 2


def test_tables_do_not_wrap_when_stdout_is_not_a_terminal(tmp_path):
    """The README job's table written to a file: no cell broken over lines, nothing cut."""
    result = run("simulate", "--out", tmp_path / "sim", "--num-clients", 2, "--epochs", 1,
                 "--distill-epochs", 1, "--rounds", 2, "--compare-rules", "",
                 "--baselines", "standalone", "--no-privacy")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert any("standalone_student" in r for r in rows)
    assert any("(last round up)" in r for r in rows), rows
    assert "…" not in result.stdout
    widths = {len(r) for r in rows}
    assert len(widths) == 1 and widths.pop() > 80  # one line per row, wider than rich's 80


def test_inspect_says_it_read_the_manifest_only(tmp_path):
    write_bundle(tmp_path / "b", torch.arange(4), torch.randn(4, 3), codec=DenseCodec(),
                 task="classification", num_classes=3, label_names=["a", "b", "c"],
                 proxy_fingerprint="sha256:" + "ab" * 32, client_id="c",
                 model_fingerprint="sha256:" + "cd" * 32)
    shard = next((tmp_path / "b").glob("shard-*"))
    shard.write_bytes(b"damaged")  # inspect does not look: verify does
    result = run("inspect", tmp_path / "b")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == (f"checked: the manifest only; fd verify "
                                              f"{tmp_path / 'b'} checks the shards, the "
                                              "signature and the values")
    assert json.loads(run("inspect", tmp_path / "b", "--json").stdout)["checked"].startswith(
        "the manifest only")
    assert run("verify", tmp_path / "b").exit_code == 1
