"""Issue 12: precision, device-side encoders, the pipelined writer, multi-process emit and
fd merge, data-parallel training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fdcli.bundle import BundleWriter, SampleCodec, TopKCodec, read_bundle, verify_bundle
from fdcli.bundle import writer as writer_mod
from fdcli.bundle.kernels import SAMPLE_BLOCK
from fdcli.bundle.merge import merge_bundles, part_path
from fdcli.devices import Ranks, ranks, resolve_dtype, share, trainer_precision
from fdcli.errors import BundleError, FdError, IncompatibleBundlesError

from .helpers import fd, peaked_logits


# -- device-side encoders, checked on the CPU ----------------------------------------------
def test_fused_topk_matches_the_cpu_encoder_and_keeps_tiny_tails_exact():
    v = 1000
    logits = peaked_logits(64, v, seed=3, scale=4.0)
    logits[:8] *= 12  # very sharp rows: tails far below 1e-6
    codec = TopKCodec(k=16, value_dtype="fp16")
    cpu, fused = codec.encode_logits(logits, v), codec.encode_fused(logits, v)
    assert torch.equal(cpu["ids"], fused["ids"])
    assert torch.allclose(cpu["lse"], fused["lse"], atol=1e-5)
    assert torch.allclose(cpu["logp"].float(), fused["logp"].float(), atol=2e-3)
    # the exact tail, in fp64: the fused tail is within 1e-4 relative even at 1e-12
    x = logits.double()
    exact = torch.logsumexp(x.scatter(1, fused["ids"].long(), -math.inf), -1) \
        - torch.logsumexp(x, -1)
    assert float(exact[:8].max()) < math.log(1e-6)
    assert torch.allclose(fused["tail_logp"].double(), exact, atol=1e-4)


def test_fused_topk_counts_ties_at_the_threshold_in_the_tail():
    # every logit equal: 8 kept, the other 42 of 50 ids (equal to the 8th largest) in the tail
    logits = torch.zeros(3, 50)
    t = TopKCodec(k=8, value_dtype="fp16").encode_fused(logits, 50)
    assert torch.allclose(t["tail_logp"], torch.full((3,), math.log(42 / 50)), atol=1e-6)
    assert torch.allclose(t["lse"], torch.full((3,), math.log(50)), atol=1e-6)
    # a row with 3 finite logits of 300 (not a multiple of the run length): 8 distinct real ids
    logits = torch.full((2, 300), -math.inf)
    logits[:, [5, 170, 299]] = torch.tensor([1.0, 2.0, 3.0])
    t = TopKCodec(k=8, value_dtype="fp16").encode_fused(logits, 300)
    ids = t["ids"].long()
    assert int(ids.max()) < 300 and bool((ids[:, 1:] > ids[:, :-1]).all())
    assert {5, 170, 299} <= set(ids[0].tolist())
    assert torch.equal(t["tail_logp"], torch.full((2,), -math.inf))


@pytest.mark.parametrize("codec", [TopKCodec(k=4), SampleCodec(draws=4)])
def test_fused_encoders_count_the_rows_the_writer_must_refuse(codec):
    logits = torch.randn(6, 300)
    logits[1, 7] = math.nan
    logits[3, 8] = math.inf
    logits[5] = -math.inf
    assert int(codec.encode_fused(logits, 300)["_bad"]) == 3
    assert int(codec.encode_fused(torch.randn(6, 300), 300)["_bad"]) == 0


@pytest.mark.parametrize("vocab", [50, 300, 2 * SAMPLE_BLOCK])
def test_fused_sample_is_unbiased_and_never_draws_an_impossible_id(vocab):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, vocab, generator=g) * 2
    logits[:, ::7] = -math.inf  # masked ids: probability 0
    codec = SampleCodec(draws=32, temperature=1.5)
    probs = torch.softmax(logits / 1.5, -1)
    acc = torch.zeros(4, vocab)
    rounds = 400
    for _ in range(rounds):
        t = codec.encode_fused(logits, vocab, g)
        assert t["ids"].shape == (4, 32) and bool((t["counts"].int().sum(-1) == 32).all())
        counts = torch.zeros(4, vocab).scatter_add_(1, t["ids"].long(), t["counts"].float())
        acc += counts
        # most frequent first, ties by id; padding is id 0 with count 0
        c = t["counts"].int()
        assert bool((c[:, 1:] <= c[:, :-1]).all())
    assert float(acc[:, ::7].sum()) == 0
    est = acc / (rounds * 32)
    # each estimate is within 5 standard errors of the probability
    se = (probs * (1 - probs) / (rounds * 32)).sqrt()
    assert bool(((est - probs).abs() <= 5 * se + 1e-4).all())


def test_sample_rows_are_the_same_whatever_else_the_writer_saw(tmp_path):
    """A batch's draws depend only on the seed and its first example id, so a process that
    writes only some batches draws the same rows for them."""
    logits = peaked_logits(40, 200, seed=1)
    kw = dict(codec=SampleCodec(draws=8), task="token", num_classes=200,
              label_fingerprint="sha256:" + "0" * 64, proxy_fingerprint="sha256:" + "1" * 64,
              client_id="c", model_fingerprint="sha256:" + "2" * 64, seed=7)
    with BundleWriter(tmp_path / "all", **kw) as w:
        for e in range(4):
            w.add([e], logits[e * 10:(e + 1) * 10], row_counts=[10])
    with BundleWriter(tmp_path / "last", **kw) as w:
        w.add([3], logits[30:], row_counts=[10])
    a, b = read_bundle(tmp_path / "all").read_all(), read_bundle(tmp_path / "last").read_all()
    width = b.tensors["ids"].shape[1]
    assert torch.equal(a.tensors["ids"][30:, :width], b.tensors["ids"])
    assert torch.equal(a.tensors["counts"][30:, :width], b.tensors["counts"])


def test_bf16_logits_encode_like_their_fp32_upcast(tmp_path):
    logits = peaked_logits(64, 500, seed=2).bfloat16()
    kw = dict(codec=TopKCodec(k=8), task="classification", num_classes=500,
              label_fingerprint="sha256:" + "0" * 64, proxy_fingerprint="sha256:" + "1" * 64,
              client_id="c", model_fingerprint="sha256:" + "2" * 64)
    with BundleWriter(tmp_path / "bf16", **kw) as w:
        w.add(range(64), logits)
    with BundleWriter(tmp_path / "fp32", **kw) as w:
        w.add(range(64), logits.float())
    a, b = read_bundle(tmp_path / "bf16").read_all(), read_bundle(tmp_path / "fp32").read_all()
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name]), name


# -- the pipelined writer -------------------------------------------------------------------
def _writer(path, **kw):
    return BundleWriter(path, codec=TopKCodec(k=4), task="classification", num_classes=30,
                        label_fingerprint="sha256:" + "0" * 64,
                        proxy_fingerprint="sha256:" + "1" * 64, client_id="c",
                        model_fingerprint="sha256:" + "2" * 64, **kw)


def test_a_failed_background_shard_write_fails_the_bundle_and_leaves_nothing(tmp_path,
                                                                               monkeypatch):
    calls = []

    def failing(tensors, meta, level):
        calls.append(meta["shard_index"])
        if meta["shard_index"] == "2":
            raise OSError(28, "No space left on device")
        return real(tensors, meta, level)

    real = writer_mod.encode_shard
    monkeypatch.setattr(writer_mod, "encode_shard", failing)
    out = tmp_path / "deep" / "bundle"
    with pytest.raises(OSError, match="No space left"):
        with _writer(out, max_shard_rows=10) as w:
            for start in range(0, 100, 10):
                w.add(range(start, start + 10), torch.randn(10, 30))
    assert "2" in calls
    assert not (tmp_path / "deep").exists()  # the bundle, its temporary and the parent


def test_background_writes_keep_shards_in_order(tmp_path):
    logits = torch.randn(95, 30)
    with _writer(tmp_path / "b", max_shard_rows=10) as w:
        for start in range(0, 95, 5):
            w.add(range(start, min(start + 5, 95)), logits[start:start + 5])
    reader = read_bundle(tmp_path / "b")
    assert [s.file for s in reader.manifest.shards] == [
        f"shard-{i:05d}.safetensors.zst" for i in range(10)]
    assert torch.equal(reader.read_all().example_ids, torch.arange(95))
    assert verify_bundle(tmp_path / "b").ok


def test_nan_logits_are_refused_even_when_found_after_the_batch_was_staged(tmp_path):
    logits = torch.randn(20, 30)
    logits[13, 4] = math.nan
    out = tmp_path / "b"
    with pytest.raises(FdError, match="NaN or infinite"):
        with _writer(out) as w:
            w.add(range(10), logits[:10])
            w.add(range(10, 20), logits[10:])
    assert not out.exists() and list(tmp_path.iterdir()) == []


# -- precision and ranks -------------------------------------------------------------------
def test_dtype_resolution_on_a_cpu():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match=r"must be one of \['auto', 'bf16', 'fp16', 'fp32'\]"):
        resolve_dtype("half", "cpu")
    if not torch.cuda.is_available():
        assert trainer_precision("auto") == {"bf16": False, "fp16": False}
        assert trainer_precision("bf16") == {"bf16": True, "fp16": False}


def test_shares_cover_every_item_once():
    for count in (0, 1, 7, 64):
        for world in (1, 2, 3, 8):
            got = [i for r in range(world) for i in share(count, Ranks(r, world, r))]
            assert got == list(range(count))


def test_cli_refuses_fp16_on_a_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 runs on this machine's GPU")
    r = fd(*["emit-logits", str(tmp_path), str(tmp_path), "--out",
                            str(tmp_path / "o"), "--dtype", "fp16"])
    assert r.exit_code == 1 and "fp16 needs a GPU" in r.output
    assert not (tmp_path / "o").exists()


def test_malformed_launcher_variables_are_refused(monkeypatch):
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'; expected an integer"):
        ranks()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="expected 0 <= RANK < WORLD_SIZE"):
        ranks()


# -- multi-process emit, fd merge, data-parallel training ----------------------------------
@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    from fdcli.lm import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("scale")
    g = torch.Generator().manual_seed(0)
    words = "court ruling appeal judge patient dose scan nurse ward fever".split()
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (50,), generator=g))
            for _ in range(30)]
    with open(root / "proxy.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    train_bpe_tokenizer(docs, root / "tok", vocab_size=200)
    (root / "gpt2.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32,
                                                "n_layer": 1, "n_head": 2, "n_positions": 64}))
    return root


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return env


LAUNCHERS = {
    "torchrun": lambda n: [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={n}", "-m", "fdcli"],
    "accelerate": lambda n: [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                             "--num_processes", str(n), "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fdcli"],
}


def _launch(procs: int, *args, cwd: Path, launcher: str = "torchrun"
            ) -> subprocess.CompletedProcess:
    head = LAUNCHERS[launcher](procs) if procs > 1 else [sys.executable, "-m", "fdcli"]
    return subprocess.run(head + [str(a) for a in args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("encoding,launcher", [("topk", "torchrun"), ("sample", "accelerate")])
def test_two_process_emit_gives_the_rows_of_a_one_process_emit(lm_files, tmp_path, encoding,
                                                                launcher):
    w = lm_files
    args = ["emit-logits", w / "gpt2.json", w / "proxy.jsonl", "--task", "causal-lm",
            "--tokenizer", w / "tok", "--max-length", "32", "--batch-size", "4",
            "--encoding", encoding, "--json"]
    one = _launch(1, *args, "--out", tmp_path / "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = _launch(2, *args, "--out", tmp_path / "two", cwd=tmp_path, launcher=launcher)
    assert two.returncode == 0, two.stderr
    assert json.loads(two.stdout)["rows"] == json.loads(one.stdout)["rows"]  # rank 0 only
    a, b = read_bundle(tmp_path / "one"), read_bundle(tmp_path / "two")
    assert verify_bundle(tmp_path / "two").ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # parts removed
    ra, rb = a.read_all(), b.read_all()
    assert torch.equal(ra.example_ids, rb.example_ids)
    assert torch.equal(ra.row_offsets, rb.row_offsets)
    assert ra.tensors.keys() == rb.tensors.keys()
    for name in ra.tensors:
        assert torch.equal(ra.tensors[name], rb.tensors[name]), name
    ma, mb = a.manifest, b.manifest
    assert (ma.proxy_fingerprint, ma.label_fingerprint, ma.producer.model_fingerprint) == \
        (mb.proxy_fingerprint, mb.label_fingerprint, mb.producer.model_fingerprint)
    assert mb.producer.config == ma.producer.config | {"processes": 2}
    assert ma.producer.config["dtype"] == "fp32"


def _parts(tmp_path, w, **kw):
    """Two parts of one emit, written in this process as ranks 0 and 1 of 2 would (with
    ``_join_parts`` patched out: no process group)."""
    from fdcli.stages import lm as stages_lm

    out = tmp_path / "b"
    for rank in (0, 1):
        os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        try:
            stages_lm.emit_token_logits(w / "gpt2.json", w / "proxy.jsonl", out,
                                        tokenizer=w / "tok", max_length=32, batch_size=4,
                                        progress=False, **kw)
        finally:
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                os.environ.pop(key, None)
    return out, [part_path(out, r, 2) for r in (0, 1)]


def test_merge_joins_parts_and_refuses_what_is_not_one_emit(lm_files, tmp_path, monkeypatch):
    from fdcli.stages import parallel

    monkeypatch.setattr(parallel, "_join_parts", lambda *a: None)
    out, parts = _parts(tmp_path, lm_files)
    assert all(p.is_dir() for p in parts) and not out.exists()
    r = fd(*["merge", *map(str, reversed(parts)), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    merged = read_bundle(out)
    assert json.loads(r.output)["parts"] == 2 and merged.manifest.producer.config[
        "processes"] == 2
    ids = merged.read_all().example_ids
    assert torch.equal(ids, torch.arange(len(ids)))  # in example order whatever the order given
    # the same part twice, overlapping parts, and parts of different emits are refused
    with pytest.raises(IncompatibleBundlesError, match="the same part is given twice"):
        merge_bundles([parts[0], parts[0]], tmp_path / "x")
    with pytest.raises(IncompatibleBundlesError, match="example 0 is also in"):
        merge_bundles([parts[0], out], tmp_path / "x")
    _, other = _parts(tmp_path / "k8", lm_files, k=8)
    r = fd(*["merge", str(parts[0]), str(other[1]), "--out",
                            str(tmp_path / "x")])
    assert r.exit_code == 1 and "encoding" in r.output and "differ from" in r.output
    (parts[1] / "shard-00000.safetensors.zst").write_bytes(b"junk")
    with pytest.raises(BundleError, match="shard-00000"):
        merge_bundles(parts, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_more_processes_than_batches_is_refused(lm_files, tmp_path, monkeypatch):
    from fdcli.stages.lm import emit_token_logits

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "64")
    with pytest.raises(ValueError, match="64 processes for .* batches .* process 0 would "
                                         "have none"):
        emit_token_logits(lm_files / "gpt2.json", lm_files / "proxy.jsonl", tmp_path / "o",
                          tokenizer=lm_files / "tok", max_length=32, batch_size=64,
                          progress=False)
    assert list(tmp_path.iterdir()) == []


def test_two_process_training_writes_one_model(lm_files, tmp_path):
    w = lm_files
    r = _launch(2, "train-specialist", w / "proxy.jsonl", "--model", w / "gpt2.json",
                "--tokenizer", w / "tok", "--task", "causal-lm", "--max-length", "32",
                "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "spec", "--json",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) > 0  # one report, from process 0
    meta = json.loads((tmp_path / "spec" / "fd.json").read_text())
    assert meta["train_tokens"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec"]
    from fdcli.lm import load_lm

    assert load_lm(tmp_path / "spec").vocab_size == meta["vocab_size"] > 0
    assert math.isfinite(meta["metrics"]["train_loss"])


def test_single_process_commands_refuse_a_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    r = fd(*["merge", str(tmp_path), "--out", str(tmp_path / "t")])
    assert r.exit_code == 1 and "fd merge runs in one process, but WORLD_SIZE=2" in r.output
    assert sorted(tmp_path.iterdir()) == []


def test_two_process_classification_emit_gives_the_rows_of_one(tmp_path):
    from fdcli.models import load_classifier, save_classifier

    from .test_pipeline import LABELS, text_recipe

    text_recipe(tmp_path, 100, seed=3, layers=1)
    clf = load_classifier(tmp_path / "bert.json", "text", LABELS,
                          tokenizer=tmp_path / "tokenizer")
    save_classifier(clf, tmp_path / "model", {"label_names": clf.label_names})
    args = ["emit-logits", tmp_path / "model", tmp_path / "all.csv", "--batch-size", "8",
            "--encoding", "topk", "--k", "2", "--json"]
    one = _launch(1, *args, "--out", tmp_path / "one", cwd=tmp_path)
    two = _launch(2, *args, "--out", tmp_path / "two", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = read_bundle(tmp_path / "one").read_all(), read_bundle(tmp_path / "two").read_all()
    assert torch.equal(a.example_ids, torch.arange(100)) and torch.equal(a.example_ids,
                                                                          b.example_ids)
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name]), name
    assert not list(tmp_path.glob("two.part*"))
    assert read_bundle(tmp_path / "two").manifest.producer.config["processes"] == 2


def test_two_process_embedding_emit_gives_the_rows_of_one(tmp_path):
    """A relational bundle from two processes: the same anchors, rows and label space."""
    from .test_pipeline import text_recipe

    text_recipe(tmp_path, 100, seed=3, layers=1)
    args = ["emit-logits", tmp_path / "bert.json", tmp_path / "all.csv", "--task", "embedding",
            "--tokenizer", tmp_path / "tokenizer", "--anchors", "20", "--k", "4",
            "--batch-size", "8", "--json"]
    one = _launch(1, *args, "--out", tmp_path / "one", cwd=tmp_path)
    two = _launch(2, *args, "--out", tmp_path / "two", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    ra, rb = read_bundle(tmp_path / "one"), read_bundle(tmp_path / "two")
    a, b = ra.read_all(), rb.read_all()
    assert torch.equal(a.example_ids, torch.arange(100)) and torch.equal(a.example_ids,
                                                                          b.example_ids)
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name]), name
    assert ra.manifest.label_space == rb.manifest.label_space
    assert rb.manifest.task == "embedding" and rb.manifest.producer.config["processes"] == 2
    assert not list(tmp_path.glob("two.part*"))
