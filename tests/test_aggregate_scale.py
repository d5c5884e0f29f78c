"""fd aggregate at scale: inputs spilled to temporary files and read a window of rows at a
time (the max_held_bytes limit), batches that shrink as clients grow, few open files, and
several processes (torchrun) that each combine a share of the examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from fdcli import BundleError, DenseCodec, LowRankCodec, SampleCodec, TopKCodec, read_bundle
from fdcli.bundle.safeio import Limits
from fdcli.errors import FdError
from fdcli.launch import Ranks
from fdcli import rules
from fdcli.rules import aggregate_sparse
from fdcli.sparse_rows import SparseRows
from fdcli.stages.aggregate import WORK_BYTES, _batch_rows, aggregate, example_share

from .helpers import make_bundle, replace_shard_tensors

HELD_NOTHING = Limits(max_held_bytes=1)


def clients(root: Path, codec, task: str, n: int = 3, vocab: int = 50,
            examples: tuple = (12, 12, 12), **kw) -> list[Path]:
    out = []
    for c in range(n):
        path = root / f"client-{c}"
        # several shards per client, so that spilled shards follow each other
        make_bundle(path, codec, task=task, vocab=vocab, examples=examples[c], data_seed=c,
                    client_id=f"c{c}", max_shard_rows=5, **kw)
        out.append(path)
    return out


def rows_of(path: Path) -> dict[str, torch.Tensor]:
    block = read_bundle(path).read_all()
    return {"example_ids": block.example_ids, "row_offsets": block.row_offsets,
            **block.tensors}


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    """Where aggregate's temporary folders go in these tests (checked empty afterwards)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("task,codec,rule", [
    ("token", TopKCodec(k=6), "confidence"),
    ("token", TopKCodec(k=6), "median"),
    ("token", SampleCodec(draws=8), "mean"),
    ("classification", DenseCodec(), "confidence"),
    ("classification", LowRankCodec(rank=3), "trimmed-mean"),
])
def test_spilled_inputs_give_the_same_bundle(tmp_path, spill_dir, task, codec, rule):
    inputs = clients(tmp_path, codec, task)
    held = aggregate(inputs, tmp_path / "held", rule=rule, progress=False)
    spilled = aggregate(inputs, tmp_path / "spilled", rule=rule, progress=False,
                        limits=HELD_NOTHING)
    a, b = rows_of(tmp_path / "held"), rows_of(tmp_path / "spilled")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert held.provenance == spilled.provenance  # the outlier report too
    assert held.rows == spilled.rows == sum(r.manifest.rows for r in map(read_bundle, inputs)) \
        // len(inputs)
    assert list(spill_dir.iterdir()) == []  # the inflated copies are gone


def test_a_spilled_shard_is_checked_as_it_is_read(tmp_path, spill_dir):
    inputs = clients(tmp_path, TopKCodec(k=6), "token")

    def change(t):
        t["ids"][0, 0] = 54  # past the 50-id vocabulary

    replace_shard_tensors(inputs[1], 1, change)
    with pytest.raises(BundleError) as err:
        aggregate(inputs, tmp_path / "out", progress=False, limits=HELD_NOTHING)
    text = str(err.value)
    assert "client-1/shard-00001.safetensors.zst (rows 0 to" in text
    assert "tensor 'ids': id 54 is out of range" in text
    assert not (tmp_path / "out").exists()
    assert list(spill_dir.iterdir()) == []


def test_batches_shrink_as_clients_grow(tmp_path):
    inputs = clients(tmp_path, TopKCodec(k=6), "token", n=1)
    reader = read_bundle(inputs[0])
    shard = reader.manifest.shards[0]
    per_row = shard.raw_bytes / shard.rows
    assert _batch_rows([reader]) == 4096
    many = _batch_rows([reader] * 100_000)
    assert many == max(1, int(WORK_BYTES // (100_000 * 16 * per_row)))
    assert many < 4096


def test_many_bundles_under_a_small_open_file_limit(tmp_path):
    """300 bundles, spilled, aggregated by a process that may hold 64 files open."""
    inputs = []
    for c in range(300):
        path = tmp_path / f"b{c:03d}"
        make_bundle(path, TopKCodec(k=4), vocab=40, examples=3, data_seed=c, client_id=f"c{c}")
        inputs.append(str(path))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
            "from fdcli.cli import main; sys.argv = ['fd'] + sys.argv[1:]; main()")
    run = subprocess.run([sys.executable, "-c", code, "--quiet", "aggregate", *inputs,
                          "--out", str(tmp_path / "out"), "--limit", "max_held_bytes=1",
                          "--json"], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path)))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert len(report["clients"]) == 300
    assert read_bundle(tmp_path / "out").manifest.examples == 3


@pytest.mark.parametrize("task,codec,procs", [("token", TopKCodec(k=6), 3),
                                              ("classification", DenseCodec(), 2)])
def test_several_processes_give_the_teacher_of_one(tmp_path, task, codec, procs):
    # clients that hold different examples: the shares are of the examples any client has
    inputs = clients(tmp_path, codec, task, examples=(12, 7, 10))
    one = aggregate(inputs, tmp_path / "one", progress=False)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", str(procs), "-m", "fdcli", "--quiet",
                          "aggregate", *map(str, inputs), "--out", str(tmp_path / "many"),
                          "--json"], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["examples"] == 12  # one report, from process 0
    a, b = rows_of(tmp_path / "one"), rows_of(tmp_path / "many")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    many = read_bundle(tmp_path / "many").manifest
    assert many.provenance == one.provenance  # the outlier report over every share
    assert many.producer.config == one.producer.config | {"processes": procs}
    assert len(many.shards) == procs
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("client")) == \
        ["many", "one"]  # the parts are gone


def test_each_process_takes_a_contiguous_share_of_the_examples(tmp_path):
    inputs = [read_bundle(p) for p in clients(tmp_path, TopKCodec(k=6), "token",
                                              examples=(4, 7, 2))]
    # the examples: 3, 13, ..., 63 (seven of them)
    assert example_share(inputs, Ranks(0, 1)) is None
    assert [example_share(inputs, Ranks(r, 3)) for r in range(3)] == \
        [(3, 23), (23, 43), (43, float("inf"))]
    with pytest.raises(FdError, match="8 processes for 7 examples: process 0 would have none"):
        example_share(inputs, Ranks(0, 8))


def zipf_clients(n_clients: int, rows: int, vocab: int = 5000, k: int = 8, seed: int = 0):
    """Sparse client rows whose ids overlap the way real vocabularies do (Zipf-like draws), so
    the union per row varies in width and the median rule makes ties."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    out = []
    for _ in range(n_clients):
        ids = torch.multinomial(weights.expand(rows, vocab), k, generator=g).sort(-1).values
        logp = torch.log_softmax(torch.randn(rows, k + 1, generator=g) * 2, -1)
        out.append(SparseRows(ids, logp[:, :k], logp[:, k], vocab))
    return out


@pytest.mark.parametrize("rule,params", [("confidence", {}), ("median", {}),
                                         ("trimmed-mean", {}), ("mean", {}),
                                         ("entropy-reduction", {}),
                                         ("weighted", {"counts": [3.0, 1.0, 2.0, 5.0, 4.0]}),
                                         ("confidence", {"measure": "neg_entropy"})])
def test_a_row_does_not_depend_on_the_rows_it_is_combined_with(rule, params):
    """The rows of a batch equal those rows combined alone, bit for bit, after the codec too:
    batches are padded to their widest union, and a sum or a tie-break that depended on that
    width would change a row with the batch size, the processes and the clients."""
    cl = zipf_clients(5, 300)
    present = torch.ones(5, 300, dtype=torch.bool)
    present[1, ::3] = False  # clients missing some rows
    codec = TopKCodec(k=8)
    whole = codec.encode_sparse(aggregate_sparse(cl, present, rule, **params))
    for a, b in [(0, 7), (7, 8), (100, 237)]:
        part = [SparseRows(c.ids[a:b], c.logp[a:b], c.tail_logp[a:b], c.num_classes)
                for c in cl]
        alone = codec.encode_sparse(aggregate_sparse(part, present[:, a:b], rule, **params))
        for name in whole:
            assert torch.equal(whole[name][a:b], alone[name]), (name, a, b)


def test_a_spilled_shard_holds_a_small_index(tmp_path):
    """A spilled shard's index is held whole, so it is narrowed: int32 ids, and no offsets
    where every example has one row (classification), with the same row spans."""
    for task, codec in [("classification", DenseCodec()), ("token", TopKCodec(k=6))]:
        path = clients(tmp_path / task, codec, task, n=1)[0]
        reader = read_bundle(path)
        info = reader.manifest.shards[0]
        held = reader.load_shard(info)
        block = reader.spill_shard(info, tmp_path, window=2)
        try:
            assert block.example_ids.dtype == torch.int32
            assert torch.equal(block.example_ids.long(), held.example_ids)
            assert (block.row_offsets is None) == (task == "classification")
            n = len(held.example_ids)
            assert [block.row_span(i, n) for i in range(n)] == \
                [held.row_span(i, n) for i in range(n)]
            assert block.rows == held.rows
        finally:
            block.close()
        assert not block.path.exists()


def test_the_median_sorts_a_slice_of_columns_at_a_time(monkeypatch):
    """Many clients over a wide union: the median sorts a slice of the columns at a time
    (MEDIAN_ELEMENTS), with the same values as in one piece."""
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(9, 5, 40, generator=g, dtype=torch.float64)
    present = torch.rand(9, 5, generator=g) > 0.3
    present[0] = True
    whole = rules.median(probs, present)
    monkeypatch.setattr(rules, "MEDIAN_ELEMENTS", 9 * 5 * 3)  # three columns a slice
    sliced = rules.median(probs, present)
    assert torch.equal(whole, sliced)
    # against the definition, one coordinate: the mean of the two middle present values
    vals = probs[present[:, 2], 2, 7].sort().values
    n = len(vals)
    raw = (vals[(n - 1) // 2] + vals[n // 2]) / 2
    ref = rules.median(probs, present)  # renormalised per row
    col = torch.stack([probs[present[:, 2], 2, j].sort().values[[(n - 1) // 2, n // 2]].mean()
                       for j in range(40)])
    assert torch.allclose(ref[2, 7], raw / col.sum())
