"""fd as a Flower app: the same federation over Flower as with the five commands offline (in
process, and across real SuperLink and SuperNode processes), hostile institutions, the
configuration, and bundles as Flower records."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fdcli.bundle import read_manifest
from fdcli.errors import FdError
from fdcli.fedavg import LocalGrid, server_identity
from fdcli.flower.client_app import app as client_app
from fdcli.flower.coordinator import coordinate
from fdcli.flower.local import local_deployment
from fdcli.flower.settings import NodeSettings, ServerSettings
from fdcli.flower.wire import check_name, folder_to_record, record_to_folder

from .helpers import fd as run
from .test_pipeline import LABELS, text_recipe

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower")
    text_recipe(root, 180, seed=3, layers=1)
    result = run("partition", root / "all.csv", "--num-clients", CLIENTS, "--alpha", 1.0,
                 "--validation-fraction", 0, "--out", root / "parts")
    assert result.exit_code == 0, result.output
    return root


def node_configs(world, work):
    return [{"data": str(world / "parts" / f"client-{i}"), "proxy": str(world / "parts" / "proxy"),
             "model": str(world / "bert.json"), "work": str(work / f"institution-{i}"),
             "client-id": f"client-{i}", "train.tokenizer": str(world / "tokenizer")}
            for i in range(CLIENTS)]


def run_config(world, folder, **extra):
    return {"out": str(folder), "proxy": str(world / "parts" / "proxy"),
            "student": str(world / "bert.json"), "rounds": 2, "min-clients": CLIENTS,
            "round-timeout": 120, "labels": ",".join(LABELS), "train.epochs": 2.0,
            "train.learning-rate": 3e-3, "distill.epochs": 2.0,
            "distill.tokenizer": str(world / "tokenizer"), **extra}


@pytest.fixture(scope="module")
def offline(world, tmp_path_factory):
    """The same federation with the five commands, as an air-gapped one runs it."""
    o = tmp_path_factory.mktemp("offline")
    parts, tok = world / "parts", world / "tokenizer"
    for r in (1, 2):
        for i in range(CLIENTS):
            extra = ["--model", world / "bert.json"] if r == 1 else \
                ["--model", o / f"specialist-{r - 1}-{i}", "--teacher", o / f"teacher-{r - 1}",
                 "--proxy", parts / "proxy"]
            result = run("train-specialist", parts / f"client-{i}", *extra, "--tokenizer", tok,
                         "--client-id", f"client-{i}", "--labels", ",".join(LABELS),
                         "--epochs", 2, "--lr", 3e-3, "--out", o / f"specialist-{r}-{i}")
            assert result.exit_code == 0, result.output
            result = run("emit-logits", o / f"specialist-{r}-{i}", parts / "proxy",
                         "--client-id", f"client-{i}", "--out", o / f"bundle-{r}-{i}")
            assert result.exit_code == 0, result.output
        result = run("aggregate", *[o / f"bundle-{r}-{i}" for i in range(CLIENTS)],
                     "--out", o / f"teacher-{r}")
        assert result.exit_code == 0, result.output
        start = world / "bert.json" if r == 1 else o / "student-1"
        result = run("distill", start, parts / "proxy", o / f"teacher-{r}", "--tokenizer", tok,
                     "--epochs", 2, "--out", o / f"student-{r}")
        assert result.exit_code == 0, result.output
    return o


def payload(folder: Path) -> dict[str, bytes]:
    """The files that must be byte-identical: shards and weights."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.name.endswith((".zst", ".safetensors"))}


def assert_same_as_offline(out: Path, work: Path, offline: Path, admitted: dict) -> None:
    for r in (1, 2):
        for i in range(CLIENTS):
            sent = out / f"round-{r}" / "bundles" / f"node-{admitted[f'client-{i}']}"
            kept = work / f"institution-{i}"
            assert payload(sent) == payload(offline / f"bundle-{r}-{i}") != {}
            assert sorted(p.name for p in sent.iterdir()) == \
                sorted(p.name for p in (offline / f"bundle-{r}-{i}").iterdir())
            assert len(list(kept.glob(f"run-*/round-{r}/bundle"))) == 1
        assert payload(out / f"round-{r}" / "teacher") == payload(offline / f"teacher-{r}")
        assert payload(out / f"round-{r}" / "student") == payload(offline / f"student-{r}")
        assert "model.safetensors" in payload(offline / f"student-{r}")
        # manifests differ only where they name paths and times: the bundles' paths
        a, b = (read_manifest(x).producer.config for x in (out / f"round-{r}" / "teacher",
                                                           offline / f"teacher-{r}"))
        assert {k for k in a if a[k] != b[k]} == {"inputs", "coverage"}


class Grid(LocalGrid):
    """An in-process grid whose nodes ``silent`` never answer (as a killed SuperNode)."""

    def __init__(self, *args, silent=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.silent = {2 + i for i in silent}

    def push_messages(self, messages):
        return super().push_messages([m for m in messages
                                      if m.metadata.dst_node_id not in self.silent])


def in_process(world, tmp, app=client_app, silent=(), nodes=None, **config):
    out, work = tmp / "run", tmp / "work"
    configs = node_configs(world, work)
    for i, extra in (nodes or {}).items():
        configs[i].update(extra)
    grid = Grid(app, CLIENTS, node_configs=configs, errors_as_replies=True, silent=silent)
    lines: list[str] = []
    with server_identity(7):
        record = coordinate(grid, ServerSettings.from_config(run_config(world, out, **config)),
                            7, log=lines.append)
    return record, out, work, lines


def test_in_process_federation_equals_the_five_commands(world, offline, tmp_path):
    record, out, work, lines = in_process(world, tmp_path)
    rounds = record["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["refused"] == {} and sorted(r["admitted"]) == ["client-0", "client-1", "client-2"]
        assert len(r["up_bytes_per_node"]) == CLIENTS and r["up_bytes"] > 0
        assert r["largest_bundle_bytes"] == max(r["up_bytes_per_node"].values())
    assert rounds[1]["down_bytes"] > rounds[0]["down_bytes"]  # the consensus goes down
    assert json.loads((out / "flower.json").read_text()) == json.loads(json.dumps(record))
    assert_same_as_offline(out, work, offline, rounds[0]["admitted"])
    assert rounds[0]["admitted"] == rounds[1]["admitted"]
    assert any("round 2: 3 bundle(s) aggregated with 'confidence'" in line for line in lines)
    # each institution kept the consensus it received, byte for byte
    for i in range(CLIENTS):
        got = next((work / f"institution-{i}").glob("run-*/round-2/consensus"))
        assert payload(got) == payload(out / "round-1" / "teacher")
        meta = json.loads(next((work / f"institution-{i}").glob(
            "run-*/round-2/specialist/fd.json")).read_text())
        assert meta["round"] == 2


def test_an_institution_can_bring_its_trained_specialist(world, offline, tmp_path):
    """Round 1 emits from the folder in node config ``specialist`` instead of training; round
    2 updates that folder's model; the rest of the federation is unchanged."""
    record, out, work, _ = in_process(
        world, tmp_path, nodes={0: {"specialist": str(offline / "specialist-1-0")}})
    assert not list((work / "institution-0").glob("run-*/round-1/specialist"))
    assert list((work / "institution-1").glob("run-*/round-1/specialist"))
    assert_same_as_offline(out, work, offline, record["rounds"][0]["admitted"])


def hostile(kind: str):
    """A ClientApp whose node 2 (client-1) misbehaves in the way ``kind`` names."""
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    def app(message, context):
        if context.node_config["partition-id"] != 1:
            return client_app(message, context)
        if kind == "fails":
            raise RuntimeError("out of memory")
        reply = client_app(message, context)
        bundle = reply.content.array_records["bundle"]
        arrays = {k: bundle[k] for k in bundle.keys()}
        if kind == "corrupt":
            shard = next(k for k in arrays if k.endswith(".zst"))
            data = arrays[shard].numpy().copy()
            data[-20:] ^= 0xFF
            arrays[shard] = Array(data)
        elif kind == "escape":
            arrays["../../escaped.txt"] = Array(np.frombuffer(b"hi", dtype=np.uint8))
        elif kind == "oversized":
            arrays["padding.bin"] = Array(np.zeros(3 << 20, dtype=np.uint8))
        elif kind == "impostor":  # client-0's bundle again, from another node
            other = Path(context.node_config["work"]).parent / "institution-0"
            arrays = dict(folder_to_record(next(other.glob("run-*/round-1/bundle"))).items())
        content = RecordDict({"bundle": ArrayRecord(arrays)})
        if kind == "two-bundles":
            content["bundle-2"] = ArrayRecord(arrays)
        return Message(content, reply_to=message)

    return app


@pytest.mark.parametrize("kind, reason", [
    ("fails", "the institution failed: RuntimeError: out of memory"),
    ("corrupt", "shard"),
    ("escape", "file name '../../escaped.txt' refused"),
    ("oversized", "more than 2000000 bytes"),
    ("impostor", "client id 'client-0' was already sent by node 2"),
    ("two-bundles", "expected one array record named 'bundle', found ['bundle', 'bundle-2']"),
    ("silent", "no answer within 120 s"),
])
def test_a_hostile_institution_is_left_out_and_the_others_go_on(world, tmp_path, kind,
                                                                 reason):
    record, out, work, lines = in_process(
        world, tmp_path, app=hostile(kind), silent=(1,) if kind == "silent" else (),
        rounds=1, **{"min-clients": 2, "max-bundle-bytes": 2_000_000})
    (entry,) = record["rounds"]
    assert list(entry["refused"]) == ["3"]  # node 3 is client-1
    assert reason in entry["refused"]["3"]
    assert sorted(entry["admitted"]) == ["client-0", "client-2"]
    assert any("node 3 left out: " in line for line in lines)
    provenance = read_manifest(out / "round-1" / "teacher").provenance
    assert [p["client_id"] for p in provenance] == ["client-0", "client-2"]
    assert (out / "round-1" / "student" / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("escaped.txt"))
    # what was refused before it was written left nothing behind
    written = sorted(p.name for p in (out / "round-1" / "bundles").iterdir())
    assert written == (["node-2", "node-3", "node-4"] if kind in ("corrupt", "impostor")
                       else ["node-2", "node-4"])


def test_too_few_bundles_stop_the_run_with_the_reason_and_no_teacher(world, tmp_path):
    with pytest.raises(FdError, match=r"round 1: 2 bundle\(s\) admitted of 3 asked, fewer "
                                      r"than min-clients \(3\)"):
        in_process(world, tmp_path, app=hostile("fails"), rounds=1)
    assert not (tmp_path / "run" / "round-1" / "teacher").exists()
    saved = json.loads((tmp_path / "run" / "flower.json").read_text())
    assert "RuntimeError: out of memory" in saved["rounds"][0]["refused"]["3"]


@pytest.mark.parametrize("config, message", [
    ({"rule": "median", "bogus": 1}, "run config: unknown key(s) 'bogus'"),
    ({"out": ""}, "run config: 'out' is required"),
    ({"train.colour": "red"}, "'train.colour': fd train-specialist --task classification has "
                              "no option 'colour'"),
    ({"train.teacher": "x"}, "has no option 'teacher' that a configuration may set"),
    ({"rounds": 0}, "'rounds' must be a whole number >= 1, got 0"),
    ({"task": "causal-lm", "train.label-column": "y"}, "--task causal-lm has no option "
                                                       "'label_column'"),
])
def test_bad_run_configurations_are_refused_by_name(world, tmp_path, config, message):
    with pytest.raises(FdError) as info:
        ServerSettings.from_config(run_config(world, tmp_path / "o", **config))
    assert message in str(info.value)


def test_node_configuration_names_what_is_missing():
    with pytest.raises(FdError, match="node config: 'data', 'work' required"):
        NodeSettings.from_config({"proxy": "p", "model": "m"})
    with pytest.raises(FdError, match="node config: unknown key\\(s\\) 'colour'"):
        NodeSettings.from_config({"data": "d", "proxy": "p", "model": "m", "work": "w",
                                  "colour": "red"})
    node = NodeSettings.from_config({"data": "d", "proxy": "p", "model": "m", "work": "w",
                                     "train.batch-size": 4, "partition-id": 0})
    assert node.overrides == {"train.batch-size": 4} and node.client_id is None


def test_a_folder_crosses_as_a_record_byte_for_byte(tmp_path):
    src = tmp_path / "src"
    (src / "shards").mkdir(parents=True)
    (src / "manifest.json").write_bytes(b'{"a": 1}')
    (src / "shards" / "00000.safetensors.zst").write_bytes(bytes(range(256)) * 9)
    record = folder_to_record(src)
    assert sorted(record.keys()) == ["manifest.json", "shards/00000.safetensors.zst"]
    got = record_to_folder(record, tmp_path / "dst", "node 9")
    assert {p.relative_to(got): p.read_bytes() for p in got.rglob("*") if p.is_file()} == \
        {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    with pytest.raises(FdError, match="more than 100 bytes"):
        record_to_folder(record, tmp_path / "small", "node 9", max_bytes=100)
    assert not (tmp_path / "small").exists()
    for bad in ("/etc/passwd", "a/../b", ".hidden", "a//b", "", "a/b/c/d/e", "x\\y"):
        with pytest.raises(FdError, match="refused"):
            check_name(bad, "node 9")
    assert check_name("shards/0.safetensors.zst", "node 9") == "shards/0.safetensors.zst"


def test_deployment_engine_across_processes_equals_the_five_commands(world, offline,
                                                                     tmp_path, monkeypatch):
    """A SuperLink and three SuperNodes as separate processes on localhost (insecure mode),
    two rounds through flwr run: the bundles, consensus and student are those of the five
    commands."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = tmp_path / "app"
    app.mkdir()
    template = (ROOT / "examples" / "flower" / "pyproject.toml").read_text()
    config = run_config(world, tmp_path / "run", **{"round-timeout": 240})
    lines = [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in config.items()]
    (app / "pyproject.toml").write_text(template.split("[tool.flwr.app.config]")[0]
                                        + "[tool.flwr.app.config]\n" + "\n".join(lines) + "\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.perf_counter()
    with local_deployment(logs, node_configs(world, tmp_path / "work")) as deployment:
        result = deployment.run(app, timeout=300)
    seconds = time.perf_counter() - started
    saved = tmp_path / "run" / "flower.json"
    assert saved.is_file(), result.stdout[-3000:] + result.stderr[-3000:] + "".join(
        log.read_text()[-2000:] for log in logs.glob("*.log"))
    record = json.loads(saved.read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2], result.stdout[-3000:]
    assert all(r["refused"] == {} and len(r["admitted"]) == CLIENTS for r in record["rounds"])
    assert "round 2: 3 bundle(s) aggregated" in result.stdout
    assert_same_as_offline(tmp_path / "run", tmp_path / "work", offline,
                           record["rounds"][0]["admitted"])
    print(f"deployment: {seconds:.1f} s for 2 rounds of 3 SuperNodes")
