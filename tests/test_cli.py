"""The fd command line: exit codes, messages and output, through Typer's CliRunner and a real
subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fdcli import TopKCodec, __version__

from .helpers import fd, load_manifest, make_bundle, save_manifest, shard_path


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "bundle"
    make_bundle(path, TopKCodec(k=4), vocab=500, examples=5, max_shard_rows=6)
    return path


def test_version():
    result = fd(*["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fd {__version__}"


def test_help_lists_commands_with_examples():
    result = fd(*["-h"])
    assert result.exit_code == 0
    assert "inspect" in result.stdout and "verify" in result.stdout
    for cmd in ("inspect", "verify"):
        sub = fd(*[cmd, "--help"])
        assert sub.exit_code == 0 and "Example" in sub.stdout


def test_inspect_bundle_table_and_json(bundle):
    result = fd(*["inspect", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "topk, k=4, value_dtype=int8, scale=0.03125" in result.stdout
    assert "client-a" in result.stdout
    result = fd(*["inspect", str(bundle), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["kind"] == "bundle"
    assert info["summary"]["rows"] == info["manifest"]["rows"] == load_manifest(bundle)["rows"]
    stored = sum(s["bytes"] for s in load_manifest(bundle)["shards"])
    assert info["summary"]["stored_bytes"] == stored


def test_inspect_single_shard_describes_itself(bundle):
    result = fd(*["inspect", str(shard_path(bundle, 1)), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "shard"
    assert info["metadata"]["shard_index"] == "1"
    assert info["metadata"]["format"] == "fd-logit-bundle"
    assert json.loads(info["metadata"]["encoding"])["k"] == 4
    assert info["tensors"]["ids"].startswith("U16[")


def test_verify_sound_bundle(bundle):
    result = fd(*["verify", str(bundle)])
    assert result.exit_code == 0
    assert result.stdout.startswith("OK ") and "rows" in result.stdout
    result = fd(*["verify", str(bundle), "--json"])
    assert json.loads(result.stdout)["ok"] is True


def test_verify_lists_every_problem_and_exits_1(bundle):
    m = load_manifest(bundle)
    m["shards"][0]["sha256"] = "f" * 64
    save_manifest(bundle, m)
    shard_path(bundle, 1).write_bytes(b"garbage")
    result = fd(*["verify", str(bundle)])
    assert result.exit_code == 1
    assert "2 problem(s) found" in result.stderr
    assert "shard-00000.safetensors.zst: sha256 is" in result.stderr
    assert "shard-00001.safetensors.zst: 7 bytes on disk" in result.stderr
    assert "Traceback" not in result.output
    result = fd(*["verify", str(bundle), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["ok"] is False and len(report["problems"]) == 2


@pytest.mark.parametrize("args,fragment", [
    (["inspect", "{tmp}/nowhere"], "not a folder"),
    (["inspect", "{tmp}"], "manifest.json: missing"),
    (["verify", "{tmp}/nowhere"], "not a folder"),
])
def test_errors_are_messages_not_tracebacks(tmp_path, args, fragment):
    result = fd(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_inspect_a_lone_file_that_is_not_a_shard(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    result = fd(*["inspect", str(f)])
    assert result.exit_code == 1
    assert "not a folder; expected a bundle folder (holding manifest.json" in result.stderr
    assert "or a '.safetensors.zst' shard" in result.stderr


def test_unknown_option_is_a_usage_error(bundle):
    result = fd(*["verify", str(bundle), "--bogus"])
    assert result.exit_code == 2


def test_console_entry_point_runs_as_a_module(bundle):
    proc = subprocess.run([sys.executable, "-m", "fdcli", "verify", str(bundle), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows_checked"] == load_manifest(bundle)["rows"]
    shard_path(bundle, 0).unlink()
    proc = subprocess.run([sys.executable, "-m", "fdcli", "verify", str(bundle)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "listed in manifest.json but missing" in proc.stderr
    assert "Traceback" not in proc.stderr
