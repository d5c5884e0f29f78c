"""Codec round trips and reconstruction bounds (hypothesis), without touching disk."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fdcli.bundle import (DenseCodec, LowRankCodec, SampleCodec, TopKCodec, codec_from_spec,
                          index_dtype, temper_sparse)
from fdcli.errors import BundleError

from .helpers import exact_logp, peaked_logits

shapes = st.tuples(st.integers(1, 12), st.integers(2, 300), st.integers(0, 10_000),
                   st.floats(0.5, 12.0))


def _logits(shape):
    rows, vocab, seed, scale = shape
    return peaked_logits(rows, vocab, seed, scale)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_dense_round_trip_within_fp16(shape):
    logits = _logits(shape)
    codec = DenseCodec()
    t = codec.encode_logits(logits, logits.shape[1])
    assert t["logp"].dtype == torch.float16 and t["logp"].shape == logits.shape
    got, want = codec.dense(t, logits.shape[1]), exact_logp(logits)
    # fp16 keeps ~11 bits: relative error 2^-11 per value, plus the renormalisation shift
    assert torch.allclose(got, want, rtol=2e-3, atol=2e-3)
    assert torch.allclose(got.exp().sum(-1), torch.ones(len(logits)), atol=1e-5)
    assert codec.check_values(t, logits.shape[1]) == []


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(1, 40), st.sampled_from(["fp16", "int8"]))
def test_topk_keeps_top_ids_exactly_and_preserves_tail(shape, k, value_dtype):
    logits = _logits(shape)
    rows, vocab = logits.shape
    codec = TopKCodec(k=k, value_dtype=value_dtype)
    t = codec.encode_logits(logits, vocab)
    kk = min(k, vocab)
    assert t["ids"].dtype == index_dtype(vocab) and t["ids"].shape == (rows, kk)
    exact = exact_logp(logits)
    ids = t["ids"].long()
    # the kept ids are the k most likely ones (compare values, ties may swap ids)
    assert torch.allclose(exact.gather(1, ids).sort(-1).values,
                          exact.topk(kk).values.sort(-1).values, atol=1e-6)
    assert bool((ids[:, 1:] > ids[:, :-1]).all())  # stored sorted by id
    # tail mass is stored exactly (fp32, computed before rounding)
    tail = 1 - exact.gather(1, ids).exp().sum(-1)
    assert torch.allclose(t["tail_logp"].exp(), tail.clamp(min=0), atol=2e-6)
    assert torch.allclose(t["lse"], torch.logsumexp(logits, -1), atol=1e-5)
    sp = codec.sparse(t, vocab)
    assert torch.equal(sp.ids, ids)
    want = exact.gather(1, ids)
    # renormalised k+1 distribution: tail plus kept ids sum to one
    total = torch.logsumexp(torch.cat([sp.logp, sp.tail_logp[:, None]], -1), -1)
    assert torch.allclose(total, torch.zeros(rows), atol=1e-5)
    stored = codec._values(t)  # before the k+1 renormalisation
    if value_dtype == "fp16":
        assert torch.allclose(stored, want, rtol=2 ** -10, atol=1e-6)
    else:
        # sqrt(p) is rounded to the nearest multiple of scale; code 0 holds sqrt(p) < scale / 2
        root, got = (want / 2).exp(), (stored / 2).exp()
        codes = t["logp_codes"]
        assert bool(((root - got).abs() <= codec.scale / 2 + 1e-6)[codes > 0].all())
        assert bool((root <= codec.scale / 2 + 1e-6)[codes == 0].all())
    assert codec.check_values(t, vocab) == []


@pytest.mark.parametrize("value_dtype,bound", [("fp16", 1e-5), ("int8", 1e-3)])
def test_topk_quantisation_kl_is_small_on_peaked_rows(value_dtype, bound):
    logits = peaked_logits(400, 5000, seed=1)
    codec = TopKCodec(k=16, value_dtype=value_dtype)
    t = codec.encode_logits(logits, 5000)
    fid = codec.fidelity(exact_logp(logits), t, 5000)
    assert 0 <= float(fid["kl"].mean()) < bound
    assert float(fid["truncation_kl"].mean()) > 0
    assert torch.allclose(fid["tail_mass"], t["tail_logp"].exp())


def test_topk_with_k_equal_vocab_is_the_full_distribution_at_any_temperature():
    logits = peaked_logits(7, 30, seed=2)
    codec = TopKCodec(k=30, value_dtype="fp16")
    t = codec.encode_logits(logits, 30)
    assert bool(torch.isinf(t["tail_logp"]).all())
    for temp in (0.5, 1.0, 2.0, 4.0):
        got = temper_sparse(codec.sparse(t, 30), temp).to_dense() if temp != 1 else \
            codec.dense(t, 30)
        want = torch.log_softmax(logits / temp, -1)
        assert torch.allclose(got, want, rtol=2e-3, atol=5e-3), temp


def test_tempering_keeps_ratios_of_kept_ids_and_spreads_tail_evenly():
    logits = peaked_logits(5, 50, seed=3)
    codec = TopKCodec(k=4, value_dtype="fp16")
    t = codec.encode_logits(logits, 50)
    sp1, sp2 = codec.sparse(t, 50), codec.sparse_at(t, 50, 2.0)
    # kept ids at T: log p_i / T up to one normaliser per row
    diff = sp2.logp - sp1.logp / 2
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-5)
    # the tail bucket is (V - k) ids of equal mass, tempered as such
    dense2 = codec.dense_at(t, 50, 2.0)
    filled = sp1.to_dense()
    assert torch.allclose(dense2, torch.log_softmax(filled / 2, -1), atol=1e-5)
    assert torch.allclose(torch.logsumexp(dense2, -1), torch.zeros(5), atol=1e-5)
    mask = torch.ones(5, 50, dtype=torch.bool).scatter(1, sp2.ids, False)
    assert torch.allclose(torch.logsumexp(dense2.masked_fill(~mask, -math.inf), -1),
                          sp2.tail_logp, atol=1e-5)


def test_topk_entries_are_sorted_by_id_and_int8_codes_are_sqrt_probabilities():
    logits = torch.tensor([[-100.0, -2.0, 0.0, -101.0, -1.0]])
    codec = TopKCodec(k=4, value_dtype="int8", scale=1 / 20)
    t = codec.encode_logits(logits, 5)
    assert t["ids"].long().tolist() == [[0, 1, 2, 4]]
    p = exact_logp(logits)[0].exp()
    want = [0] + [int(torch.round(p[i].sqrt() * 20)) for i in (1, 2, 4)]
    assert t["logp_codes"].tolist() == [want]
    assert want[2] == 16  # round(sqrt(0.6439) * 20)
    values = codec._values(t)[0]
    assert abs(float(values[0]) - 2 * math.log(0.25 / 20)) < 1e-6  # code 0
    assert abs(float(values[2]) - 2 * math.log(16 / 20)) < 1e-6
    assert codec.check_values(t, 5) == []


@pytest.mark.parametrize("k,levels", [(1, 16), (4, 32), (16, 63), (64, 126), (512, 255)])
def test_default_int8_scale_grows_with_k(k, levels):
    assert TopKCodec(k=k).scale == 1 / levels


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.integers(1, 255), st.integers(0, 1000))
def test_sample_counts_add_up_and_ids_are_valid(vocab, draws, seed):
    logits = peaked_logits(6, vocab, seed)
    codec = SampleCodec(draws=draws)
    t = codec.encode_logits(logits, vocab, torch.Generator().manual_seed(seed))
    assert t["counts"].dtype == torch.uint8
    assert bool((t["counts"].int().sum(-1) == draws).all())
    assert t["ids"].shape[1] <= min(draws, vocab)
    assert codec.check_values(t, vocab) == []
    sp = codec.sparse(t, vocab)
    assert torch.allclose(torch.logsumexp(sp.logp, -1), torch.zeros(6), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sample_estimate_is_unbiased(temperature):
    logits = peaked_logits(3, 25, seed=4, scale=2.0)
    p = torch.softmax(logits / temperature, -1)
    codec = SampleCodec(draws=12, temperature=temperature)
    g = torch.Generator().manual_seed(0)
    reps = 3000
    acc = torch.zeros_like(p)
    for _ in range(reps):
        acc += codec.dense_at(codec.encode_logits(logits, 25, g), 25, temperature).exp()
    mean = acc / reps
    # each entry is a mean of reps * draws Bernoulli draws: allow 5 standard errors
    se = (p * (1 - p) / (reps * 12)).sqrt()
    assert bool(((mean - p).abs() <= 5 * se + 1e-6).all()), (mean - p).abs().max()
    with pytest.raises(BundleError, match="drawn at"):
        codec.sparse_at(codec.encode_logits(logits, 25, g), 25, temperature * 3)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 20), st.integers(2, 40), st.integers(0, 1000))
def test_lowrank_full_rank_is_exact_and_low_rank_is_normalised(rows, vocab, seed):
    logits = peaked_logits(rows, vocab, seed, scale=2.0)
    full = LowRankCodec(rank=min(rows, vocab))
    t = full.encode_logits(logits, vocab)
    assert t["u"].shape[0] == rows and t["v"].shape[1] == vocab
    assert float(full.fidelity(exact_logp(logits), t, vocab)["kl"].max()) < 1e-3
    low = LowRankCodec(rank=1)
    t1 = low.encode_logits(logits, vocab)
    d = low.dense(t1, vocab)
    assert torch.allclose(d.exp().sum(-1), torch.ones(rows), atol=1e-5)
    assert float(low.fidelity(exact_logp(logits), t1, vocab)["kl"].min()) >= -1e-6


def test_index_dtype_is_the_narrowest_that_fits():
    assert index_dtype(256) == torch.uint8
    assert index_dtype(257) == torch.uint16
    assert index_dtype(65536) == torch.uint16
    assert index_dtype(65537) == torch.uint32
    assert index_dtype(152064) == torch.uint32


def test_ids_above_17_bits_survive():
    vocab = 200_000
    logits = torch.full((2, vocab), -10.0)
    logits[0, 131_073] = 5.0
    logits[1, 199_999] = 5.0
    codec = TopKCodec(k=1, value_dtype="fp16")
    t = codec.encode_logits(logits, vocab)
    assert t["ids"].dtype == torch.uint32
    assert codec.sparse(t, vocab).ids.flatten().tolist() == [131_073, 199_999]


@pytest.mark.parametrize("spec,message", [
    ({"name": "zip"}, "unknown encoding 'zip'"),
    ({"name": "topk", "k": 0}, "k must be a positive integer"),
    ({"name": "topk", "k": 4, "value_dtype": "bf16"}, "value_dtype must be 'fp16' or 'int8'"),
    ({"name": "topk", "k": 4, "scale": 0.001}, "scale must be a number in \\[1/255, 1\\]"),
    ({"name": "sample", "draws": 300}, "draws must be an integer in \\[1, 255\\]"),
    ({"name": "lowrank", "rank": 2, "colour": "red"}, "invalid parameters"),
    ("topk", "expected an object with a 'name' string"),
])
def test_bad_encoding_specs_are_refused(spec, message):
    with pytest.raises(BundleError, match=message):
        codec_from_spec(spec)


def test_truncation_kl_equals_kl_to_the_evenly_filled_reconstruction():
    logits = peaked_logits(30, 400, seed=5)
    codec = TopKCodec(k=8, value_dtype="fp16")
    t = codec.encode_logits(logits, 400)
    exact = exact_logp(logits)
    ids = t["ids"].long()
    filled = torch.full_like(exact, 0.0)
    others = 400 - 8
    filled[:] = (t["tail_logp"] - math.log(others))[:, None]
    filled.scatter_(1, ids, exact.gather(1, ids))
    want = (exact.exp() * (exact - filled)).sum(-1)
    got = codec.fidelity(exact_logp(logits), t, 400)["truncation_kl"]
    assert torch.allclose(got, want, atol=1e-5)
    assert float(want.mean()) > 0.01


def test_encode_sparse_keeps_the_top_k_and_breaks_ties_to_the_lower_position():
    """The kept positions are a stable descending sort's first k, in position order: ties
    (many, from few distinct values), -inf entries and the smallest float (unlisted ids given
    out to fill a row) among them; one row of the encoded rows keeps its tied ids by id."""
    from fdcli.bundle.codecs.topk import _top_positions
    from fdcli.sparse_rows import SparseRows

    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        rows, width = 1 + trial % 7, 1 + trial % 40
        k = 1 + trial % width
        key = torch.randint(0, 4, (rows, width), generator=g).float()
        key[torch.rand(rows, width, generator=g) < 0.2] = -math.inf
        key[torch.rand(rows, width, generator=g) < 0.1] = torch.finfo(torch.float32).min
        want = key.sort(dim=-1, descending=True, stable=True).indices[:, :k].sort(-1).values
        assert torch.equal(_top_positions(key, k), want), trial
    # four ids of equal probability 0.2 and one of 0.2 in the tail: k = 2 keeps ids 3 and 5
    rows = SparseRows(torch.tensor([[3, 5, 8, 9]]), torch.full((1, 4), 0.2).log(),
                      torch.tensor([0.2]).log(), 20)
    t = TopKCodec(2, "fp16").encode_sparse(rows)
    assert t["ids"].tolist() == [[3, 5]]
    assert math.isclose(float(t["tail_logp"][0].exp()), 0.6, rel_tol=1e-6)
