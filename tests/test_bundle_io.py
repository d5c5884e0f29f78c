"""Writing and reading bundles on disk: streaming shards, atomicity, iteration, fidelity."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fdcli import (BundleError, BundleWriter, DenseCodec, FdError, LowRankCodec, SampleCodec,
                   TopKCodec, read_bundle, verify_bundle)
from fdcli.bundle import fingerprint_labels

from .helpers import MODEL_FP, PROXY_FP, exact_logp, make_bundle, peaked_logits

CODECS = [DenseCodec(), TopKCodec(k=5), TopKCodec(k=5, value_dtype="fp16"),
          SampleCodec(draws=20), LowRankCodec(rank=3)]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: repr(c))
@pytest.mark.parametrize("task", ["token", "classification"])
def test_round_trip_through_disk(tmp_bundle, codec, task):
    m, logits, ids, counts = make_bundle(tmp_bundle, codec, task=task, vocab=40, examples=9,
                                         max_shard_rows=8)
    assert sorted(os.listdir(tmp_bundle)) == ["manifest.json"] + [
        f"shard-{i:05d}.safetensors.zst" for i in range(len(m.shards))]
    assert len(m.shards) >= 2
    assert m.rows == int(counts.sum()) and m.examples == 9
    assert [s.rows for s in m.shards] == [int(x) for x in
                                          torch.tensor([s.rows for s in m.shards])]
    for s in m.shards:
        assert s.bytes == (tmp_bundle / s.file).stat().st_size
    report = verify_bundle(tmp_bundle)
    assert report.ok, report.problems
    assert report.rows_checked == m.rows
    reader = read_bundle(tmp_bundle)
    blocks = list(reader.iter_blocks())
    assert torch.equal(torch.cat([b.example_ids for b in blocks]), ids)
    if codec.shared_tensors:
        dense = torch.cat([b.dense() for b in blocks])
    else:
        dense = reader.read_all().dense()
    assert dense.shape == logits.shape
    assert torch.allclose(dense.exp().sum(-1), torch.ones(len(logits)), atol=1e-4)
    if codec.name in ("dense", "topk"):
        # the stored most likely id is the model's, up to the value dtype's rounding
        exact = exact_logp(logits)
        at_argmax = exact.gather(1, dense.argmax(-1, keepdim=True)).squeeze(1)
        assert bool((at_argmax >= exact.max(-1).values - (getattr(codec, "scale", 0) or 0.01)
                     ).all())
    examples = list(reader.iter_examples())
    assert [int(e.example_ids[0]) for e in examples] == ids.tolist()
    assert [e.rows for e in examples] == counts.tolist()
    if not codec.shared_tensors:
        start = int(counts[:4].sum())
        got = examples[4].dense()
        assert torch.allclose(got, dense[start:start + int(counts[4])])


def test_manifest_records_everything(tmp_bundle):
    names = ["cat", "dog", "eel"]
    m, *_ = make_bundle(tmp_bundle, DenseCodec(), task="classification", vocab=3, examples=4,
                        labels=names, config={"batch_size": 8}, seed=7)
    d = json.loads((tmp_bundle / "manifest.json").read_text())
    assert d["format"] == "fd-logit-bundle" and d["version"] == 1
    assert d["task"] == "classification" and d["encoding"] == {"name": "dense"}
    assert d["label_space"] == {"fingerprint": fingerprint_labels(names), "names": names}
    assert d["proxy"] == {"fingerprint": PROXY_FP}
    assert d["producer"]["client_id"] == "client-a"
    assert d["producer"]["model_fingerprint"] == MODEL_FP
    assert d["producer"]["config"] == {"seed": 7, "batch_size": 8}
    assert d["rows"] == 4 and d["examples"] == 4
    assert set(d["fidelity"]) == {"mean_tail_mass", "mean_kl_nats", "mean_truncation_kl_nats"}
    assert d["fidelity"]["mean_tail_mass"] == 0.0 and d["fidelity"]["mean_kl_nats"] < 1e-5
    shard = d["shards"][0]
    assert set(shard) == {"file", "sha256", "rows", "examples", "bytes", "raw_bytes"}


def test_topk_fidelity_matches_a_direct_computation(tmp_bundle):
    m, logits, *_ = make_bundle(tmp_bundle, TopKCodec(k=4), vocab=50, examples=5)
    exact = exact_logp(logits)
    tail = 1 - exact.topk(4).values.exp().sum(-1)
    assert abs(m.fidelity["mean_tail_mass"] - float(tail.mean())) < 1e-6
    assert 0 < m.fidelity["mean_kl_nats"] < 1e-3
    assert m.fidelity["mean_truncation_kl_nats"] > 0


def test_shards_are_bounded_by_bytes_and_never_split_an_example(tmp_bundle):
    rows = [30, 1, 50, 7, 7, 7, 120, 3]
    m, logits, ids, counts = make_bundle(tmp_bundle, TopKCodec(k=8), vocab=300,
                                         examples=len(rows), rows_per_example=rows,
                                         max_shard_bytes=60 * 28)
    per_row = 8 * 2 + 8 + 8  # uint16 ids, uint8 codes, fp32 tail and lse
    limit = (60 * 28) // per_row
    for s in m.shards:
        assert s.rows <= limit or s.examples == 1
    reader = read_bundle(tmp_bundle)
    got = [int(c) for b in reader.iter_blocks() for c in b.row_offsets.diff()]
    assert got == rows


@pytest.mark.parametrize("codec", [TopKCodec(k=3), SampleCodec(draws=8)], ids=repr)
def test_writer_streams_many_batches(tmp_bundle, codec):
    vocab = 300
    with BundleWriter(tmp_bundle, codec=codec, task="token", num_classes=vocab,
                      label_fingerprint=fingerprint_labels([str(i) for i in range(vocab)]),
                      proxy_fingerprint=PROXY_FP, client_id="c", model_fingerprint=MODEL_FP,
                      max_shard_rows=25) as w:
        for b in range(10):
            w.add([2 * b, 2 * b + 1], peaked_logits(9, vocab, b), row_counts=[4, 5])
    assert w.manifest.rows == 90 and w.manifest.examples == 20
    assert all(s.rows <= 25 for s in w.manifest.shards)
    assert verify_bundle(tmp_bundle).ok
    block = read_bundle(tmp_bundle).read_all()
    assert block.example_ids.tolist() == list(range(20))
    assert block.row_offsets.tolist() == [0] + torch.tensor([4, 5] * 10).cumsum(0).tolist()
    assert torch.allclose(block.dense().exp().sum(-1), torch.ones(90), atol=1e-4)


def test_an_exception_leaves_nothing_behind(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        with BundleWriter(target, codec=DenseCodec(), task="classification", num_classes=3,
                          label_names=["a", "b", "c"], proxy_fingerprint=PROXY_FP,
                          client_id="c", model_fingerprint=MODEL_FP, max_shard_rows=1) as w:
            w.add([0, 1, 2], torch.randn(3, 3))
            raise RuntimeError("model crashed")
    assert os.listdir(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_bundle):
    make_bundle(tmp_bundle, DenseCodec(), vocab=5)
    before = (tmp_bundle / "manifest.json").read_bytes()
    with pytest.raises(FdError, match="output already exists.*--overwrite"):
        make_bundle(tmp_bundle, DenseCodec(), vocab=5)
    assert (tmp_bundle / "manifest.json").read_bytes() == before
    m, *_ = make_bundle(tmp_bundle, TopKCodec(k=2), vocab=5, overwrite=True)
    assert read_bundle(tmp_bundle).manifest.encoding["name"] == "topk"
    assert sorted(p.name for p in tmp_bundle.parent.iterdir()) == ["bundle"]


def test_empty_bundle_is_refused(tmp_path):
    w = BundleWriter(tmp_path / "b", codec=DenseCodec(), task="classification", num_classes=2,
                     label_names=["a", "b"], proxy_fingerprint=PROXY_FP, client_id="c",
                     model_fingerprint=MODEL_FP)
    with pytest.raises(FdError, match="no examples were written"):
        w.close()
    assert os.listdir(tmp_path) == []


def test_nan_logits_are_refused(tmp_bundle):
    logits = torch.randn(2, 4)
    logits[1, 2] = float("nan")
    w = BundleWriter(tmp_bundle, codec=DenseCodec(), task="classification", num_classes=4,
                     label_names=list("abcd"), proxy_fingerprint=PROXY_FP, client_id="c",
                     model_fingerprint=MODEL_FP)
    with pytest.raises(FdError, match="the model produced NaN or infinite logits"):
        w.add([0, 1], logits)
    w.abort()
    assert not tmp_bundle.exists() and list(tmp_bundle.parent.iterdir()) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"row_counts": [2, 2]}, "4 rows in row_counts do not match 3 rows"),
    ({"row_counts": None}, "token bundles need row_counts"),
])
def test_writer_checks_its_input(tmp_bundle, kwargs, message):
    w = BundleWriter(tmp_bundle, codec=DenseCodec(), task="token", num_classes=4,
                     label_fingerprint=fingerprint_labels(list("abcd")),
                     proxy_fingerprint=PROXY_FP, client_id="c", model_fingerprint=MODEL_FP)
    with pytest.raises(ValueError, match=message):
        w.add([0, 1], torch.randn(3, 4), **kwargs)
    with pytest.raises(ValueError, match=r"logits must be \[rows, 4\]"):
        w.add([0], torch.randn(1, 5), row_counts=[1])
    w.abort()


def test_sample_bundle_read_at_another_temperature_is_refused(tmp_bundle):
    make_bundle(tmp_bundle, SampleCodec(draws=8), vocab=20)
    block = next(read_bundle(tmp_bundle).iter_blocks())
    assert block.sparse(1.0).ids.shape[0] == block.rows
    with pytest.raises(BundleError, match="temperature 1.0.*cannot be read at 2.0"):
        block.sparse(2.0)


def test_target_created_meanwhile_is_not_clobbered(tmp_bundle):
    w = BundleWriter(tmp_bundle, codec=DenseCodec(), task="classification", num_classes=2,
                     label_names=["a", "b"], proxy_fingerprint=PROXY_FP, client_id="c",
                     model_fingerprint=MODEL_FP)
    w.add([0], torch.randn(1, 2))
    tmp_bundle.mkdir()
    (tmp_bundle / "precious.txt").write_text("keep me")
    with pytest.raises(FdError, match="output already exists"):
        w.close()
    assert sorted(p.name for p in tmp_bundle.parent.iterdir()) == ["bundle"]
    assert (tmp_bundle / "precious.txt").read_text() == "keep me"


def test_a_file_in_the_way_is_never_replaced(tmp_path):
    target = tmp_path / "bundle"
    target.write_text("not a bundle")
    with pytest.raises(FdError, match="exists and is not a folder"):
        BundleWriter(target, codec=DenseCodec(), task="classification", num_classes=2,
                     label_names=["a", "b"], proxy_fingerprint=PROXY_FP, client_id="c",
                     model_fingerprint=MODEL_FP, overwrite=True)
    assert target.read_text() == "not a bundle"


def test_a_shard_has_the_same_bytes_every_time():
    """safetensors orders the header's metadata by a hash map seeded afresh for each file
    (and each process); fd sorts the header, so the same tensors and metadata give the same
    shard bytes every time."""
    from fdcli.bundle.shards import canonical_header, decompress_shard, encode_shard

    md = {f"key{i}": str(i) for i in range(12)}
    tensors = {"b": torch.ones(2, 3), "a": torch.arange(4)}
    assert len({encode_shard(tensors, md)[0] for _ in range(8)}) == 1
    data, size = encode_shard({"x": torch.zeros(3)}, {"z": "1", "a": "2"})
    raw, header, metadata = decompress_shard(data, size, "test")
    assert metadata == {"z": "1", "a": "2"} and list(header) == ["x"]
    n = int.from_bytes(raw[:8], "little")
    assert raw[8:8 + n].decode().startswith('{"__metadata__":{"a":"2","z":"1"},"x":')
    assert canonical_header(raw) == raw
