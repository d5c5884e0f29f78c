"""Resumable emission: an emit killed (or interrupted) midway and resumed with --resume equals
an uninterrupted one, row for row and shard for shard."""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fdcli.bundle import BundleWriter, TopKCodec, read_bundle
from fdcli.bundle.codecs.sample import SampleCodec
from fdcli.bundle.journal import JOURNAL

from .helpers import fd_ok, peaked_logits

FP = {"label_fingerprint": "sha256:" + "a" * 64, "proxy_fingerprint": "sha256:" + "b" * 64,
      "model_fingerprint": "sha256:" + "c" * 64, "client_id": "c"}

#: runs fd with shards of at most 40 rows, and kills the process (no clean-up of any kind)
#: once the writer has been given KILL_AFTER batches
KILLER = """
import os, sys
from fdcli.bundle import writer as W
W.BundleWriter.__init__.__kwdefaults__["max_shard_rows"] = 40
kill_after, calls = int(sys.argv[1]), [0]
add = W.BundleWriter.add
def killing_add(self, *a, **k):
    calls[0] += 1
    if calls[0] > kill_after:
        os._exit(9)
    return add(self, *a, **k)
W.BundleWriter.add = killing_add
sys.argv = ["fd", *sys.argv[2:]]
from fdcli.cli import main
main()
"""


def _write(path: Path, codec, logits, *, stop_after: int | None = None, resume=False,
           **kwargs) -> BundleWriter:
    """14 batches of 7 examples of 4 rows; with ``stop_after``, interrupted (Ctrl-C) after
    that many batches."""
    with pytest.raises(KeyboardInterrupt) if stop_after is not None else nullcontext():
        with BundleWriter(path, codec=codec, task="token", num_classes=logits.shape[1],
                          max_shard_rows=37, resume=resume, **FP, **kwargs) as w:
            begin = 0 if w.resume_after is None else w.resume_after + 1
            for n, b in enumerate(range(begin, 100, 7)):
                if stop_after is not None and n == stop_after:
                    raise KeyboardInterrupt
                ids = range(b, min(b + 7, 100))
                w.add(ids, logits[4 * ids.start:4 * ids.stop], row_counts=[4] * len(ids))
    return w


def _same_bundle(a: Path, b: Path) -> None:
    """Equal rows, shards cut at the same examples, equal manifests but for the shards'
    compressed bytes (safetensors orders a shard's metadata differently in each process)."""
    ra, rb = read_bundle(a), read_bundle(b)
    blk_a, blk_b = ra.read_all(), rb.read_all()
    assert torch.equal(blk_a.example_ids, blk_b.example_ids)
    assert torch.equal(blk_a.row_offsets, blk_b.row_offsets)
    sa, sb = blk_a.sparse(), blk_b.sparse()
    assert torch.equal(sa.ids, sb.ids) and torch.equal(sa.logp, sb.logp)
    assert torch.equal(sa.tail_logp, sb.tail_logp)
    ma, mb = ra.manifest.to_dict(), rb.manifest.to_dict()
    for m in (ma, mb):
        m["producer"]["created"] = None
        m["shards"] = [(s["file"], s["rows"], s["examples"], s["raw_bytes"]) for s in m["shards"]]
    assert ma == mb


@pytest.mark.parametrize("codec", [TopKCodec(k=4), SampleCodec(draws=6)], ids=["topk", "sample"])
def test_interrupted_writer_resumes_to_the_same_bundle(tmp_path, codec):
    logits = peaked_logits(400, 50)
    full = _write(tmp_path / "full", codec, logits, created="2026-01-01T00:00:00+00:00")
    _write(tmp_path / "cut", codec, logits, stop_after=8)
    left = list(tmp_path.glob(".cut.tmp-*"))
    assert not (tmp_path / "cut").exists() and len(left) == 1
    assert (left[0] / JOURNAL).exists() and list(left[0].glob("shard-*.safetensors.zst"))
    w = _write(tmp_path / "cut", codec, logits, resume=True)
    assert w.resume_note.startswith("resuming after ") and w.resume_after is not None
    # batches end at examples 6, 13, ...; it goes on after a batch wholly in the kept shards
    assert (w.resume_after + 1) % 7 == 0 and 0 < w.resume_after < 56
    assert not list(tmp_path.glob(".cut.tmp-*"))
    assert not (tmp_path / "cut" / JOURNAL).exists()
    assert full.manifest.fidelity == w.manifest.fidelity
    assert len(full.manifest.shards) == len(w.manifest.shards) == 12
    _same_bundle(tmp_path / "full", tmp_path / "cut")


def test_resume_checks_what_it_reuses(tmp_path):
    logits = peaked_logits(400, 50)
    codec = TopKCodec(k=4)
    _write(tmp_path / "full", codec, logits)
    # nothing to resume: said, and written from the first example
    w = _write(tmp_path / "new", codec, logits, resume=True)
    assert w.resume_note == ("no interrupted emit of this bundle to resume; starting from the "
                             "first example") and w.resume_after is None
    _same_bundle(tmp_path / "full", tmp_path / "new")
    # an ordinary error discards everything, as before
    with pytest.raises(ValueError):
        with BundleWriter(tmp_path / "bad", codec=codec, task="token", num_classes=50,
                          max_shard_rows=37, **FP) as w:
            w.add(range(0, 7), logits[:28], row_counts=[4] * 7)
            w.add(range(7, 14), logits[28:56], row_counts=[4] * 8)
    assert not list(tmp_path.glob(".bad.tmp-*"))
    # other settings: not reused, and said why
    _write(tmp_path / "cut", codec, logits, stop_after=8)
    w = _write(tmp_path / "cut", TopKCodec(k=5), logits, resume=True)
    assert w.resume_after is None
    assert "written with other settings" in w.resume_note
    assert "starting from the first example" in w.resume_note
    # a damaged shard: the shards before it are kept, the rest written again
    import shutil

    for old in [tmp_path / "cut", *tmp_path.glob(".cut.tmp-*")]:
        shutil.rmtree(old)
    _write(tmp_path / "cut", codec, logits, stop_after=8)
    (left,) = tmp_path.glob(".cut.tmp-*")
    journal = [json.loads(x) for x in (left / JOURNAL).read_text().splitlines()]
    assert len(journal) >= 3
    shard1 = left / journal[1]["shard"]["file"]
    shard1.write_bytes(shard1.read_bytes()[:-1] + b"\0")
    w = _write(tmp_path / "cut", codec, logits, resume=True)
    assert w.resume_note.startswith("resuming after 1 complete shard(s), 9 example(s)")
    _same_bundle(tmp_path / "full", tmp_path / "cut")
    # a resumable writer needs a row-wise codec
    from fdcli.bundle.codecs.lowrank import LowRankCodec

    with pytest.raises(ValueError, match="cannot resume"):
        BundleWriter(tmp_path / "lr", codec=LowRankCodec(rank=2), task="token", num_classes=50,
                     resume=True, **FP)


def _killable(tmp_path, kill_after: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, str(kill_after), *map(str, args)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from fdcli.lm import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("resume")
    words = ["court", "ruling", "patient", "dose", "scan", "appeal", "ward", "order"]
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, 8, (30,), generator=g))
            for _ in range(48)]
    (root / "proxy.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    train_bpe_tokenizer(docs, root / "model", vocab_size=300)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64,
                               vocab_size=300)).save_pretrained(root / "model")
    return root


def test_killed_emit_resumes_to_the_same_bundle(tiny_lm, tmp_path):
    """fd emit-logits killed (os._exit, nothing cleaned up) after 5 of its 12 batches, then
    run again with --resume: the bundle equals an uninterrupted emit's, sampled ids included
    (top-k: the classification test below and the writer tests above)."""
    encoding = ["--draws", "8"]
    w = tiny_lm
    common = ["emit-logits", w / "model", w / "proxy.jsonl", "--task", "causal-lm",
              "--max-length", "16", "--batch-size", "4", *encoding]
    full = _killable(tmp_path, 10 ** 6, *common, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    killed = _killable(tmp_path, 5, *common, "--out", tmp_path / "cut")
    assert killed.returncode == 9 and not (tmp_path / "cut").exists()
    (left,) = tmp_path.glob(".cut.tmp-*")
    kept = len((left / JOURNAL).read_text().splitlines())
    assert kept >= 2
    again = _killable(tmp_path, 10 ** 6, *common, "--resume", "--out", tmp_path / "cut")
    assert again.returncode == 0, again.stderr
    assert f"resuming after {kept} complete shard(s)" in " ".join(again.stderr.split())
    assert not list(tmp_path.glob(".cut.tmp-*"))
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(
        p.name for p in (tmp_path / "full").iterdir())
    _same_bundle(tmp_path / "full", tmp_path / "cut")


def test_killed_classification_emit_resumes_to_the_same_bundle(tmp_path):
    """The classification emit writes 1,024 examples at a time: killed after two of its three
    writes, resumed, equal to an uninterrupted emit."""
    from fdcli.models import train_word_tokenizer

    from .test_pipeline import make_csv

    make_csv(tmp_path / "private.csv", 40, seed=1)
    make_csv(tmp_path / "big.csv", 2100, seed=2)
    texts = [r.rsplit(",", 1)[0] for r in (tmp_path / "big.csv").read_text().splitlines()[1:]]
    (tmp_path / "proxy.csv").write_text("text\n" + "\n".join(texts) + "\n")
    train_word_tokenizer(texts, tmp_path / "tok")
    (tmp_path / "recipe.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}))
    fd_ok("train-specialist", tmp_path / "private.csv", "--model", tmp_path / "recipe.json",
          "--tokenizer", tmp_path / "tok", "--epochs", "1", "--out", tmp_path / "spec")
    common = ["emit-logits", tmp_path / "spec", tmp_path / "proxy.csv", "--encoding", "topk",
              "--k", "2"]
    assert _killable(tmp_path, 10 ** 6, *common, "--out", tmp_path / "full").returncode == 0
    assert _killable(tmp_path, 2, *common, "--out", tmp_path / "cut").returncode == 9
    again = _killable(tmp_path, 10 ** 6, *common, "--resume", "--out", tmp_path / "cut")
    assert again.returncode == 0, again.stderr
    # shards of 40 rows: the first two writes (2,048 examples) leave up to 51 complete shards
    # (the last ones may still have been compressing in the background when it was killed)
    found = re.search(r"resuming after (\d+) complete shard\(s\), (\d+) example\(s\)",
                      " ".join(again.stderr.split()))
    assert found, again.stderr
    shards, examples = map(int, found.groups())
    assert 25 < shards <= 51 and examples == 40 * shards
    _same_bundle(tmp_path / "full", tmp_path / "cut")


def test_a_damaged_journal_is_not_reused(tmp_path):
    logits = peaked_logits(400, 50)
    codec = TopKCodec(k=4)
    _write(tmp_path / "cut", codec, logits, stop_after=8)
    (left,) = tmp_path.glob(".cut.tmp-*")
    lines = (left / JOURNAL).read_text().splitlines()
    last = json.loads(lines[-1])
    last["checkpoint"]["sums"] = "not a dict"
    (left / JOURNAL).write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    w = _write(tmp_path / "cut", codec, logits, resume=True)
    assert "its journal is damaged" in w.resume_note and w.resume_after is None
    assert read_bundle(tmp_path / "cut").manifest.rows == 400
