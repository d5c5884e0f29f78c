"""The rules on listed entries (fdcli.union_rules) against the dense rules over the union
support (fdcli.rules.union_support): the median, the top-class agreements and the max
confidence scores bit for bit, the sums to within rounding."""

from __future__ import annotations

import math

import pytest
import torch

from fdcli import rules
from fdcli import union_order as uo
from fdcli import union_rules as ur
from fdcli.bundle import TopKCodec
from fdcli.sparse_rows import SparseRows

from .test_aggregate_scale import zipf_clients


def random_clients(seed: int, k: int, n: int, v: int, width: int) -> list[SparseRows]:
    """Clients keeping ``width`` (or half as many) random ids per row, some entries and tails
    dropped (-inf)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(k):
        w = width if i % 3 else max(1, width // 2)
        ids = torch.stack([torch.randperm(v, generator=g)[:w] for _ in range(n)]).sort(-1).values
        logp = torch.log_softmax(torch.randn(n, w + 1, generator=g) * 2, -1)
        kept = logp[:, :w].masked_fill(torch.rand(n, w, generator=g) < 0.1, -math.inf)
        tail = logp[:, w].masked_fill(torch.rand(n, generator=g) < 0.05, -math.inf)
        out.append(SparseRows(ids, kept, tail, v))
    return out


def tied_clients(seed: int) -> list[SparseRows]:
    """Probabilities in steps of 1/8 or so, tails of zero for half the clients, vocabularies
    as small as 4 ids (a client may list them all): the median meets many ties."""
    g = torch.Generator().manual_seed(seed)
    k, n, v = 3 + seed % 9, 25, [4, 6, 9, 40][seed % 4]
    out = []
    for i in range(k):
        w = min(v, 1 + (seed + i) % 5)
        ids = torch.stack([torch.randperm(v, generator=g)[:w] for _ in range(n)]).sort(-1).values
        weight = torch.randint(0, 4, (n, w + 1), generator=g).double()
        weight[:, 0] += 1
        if (seed + i) % 2:
            weight[:, w] = 0
        p = weight / weight.sum(-1, keepdim=True)
        out.append(SparseRows(ids, p[:, :w].log().float(), p[:, w].log().float(), v))
    return out


def cases():
    for seed in range(6):
        yield random_clients(seed, 7, 40, 30 if seed % 2 else 12, 6)
        yield zipf_clients(6 + seed % 3, 50, vocab=200 if seed % 2 else 5000, k=8, seed=seed)
    for seed in range(16):
        yield tied_clients(seed)


def with_present(clients, seed):
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(len(clients), clients[0].ids.shape[0], generator=g) > 0.3
    present[seed % len(clients)] = True
    return present


@pytest.fixture(params=["search", "search for the second middle value", "sort",
                        "sort every listed column", "one recount of the listers",
                        "as configured"])
def median_path(request, monkeypatch):
    """The median of a column that one client lists is in closed form; of one that several
    list it is the row's spread less the listers' where they all list more (the listers
    recounted until they settle; with one recount, the unsettled columns go to the search),
    else searched for among the sorted spreads, or (many listers) found by sorting the
    column's values; all must give the dense values. Of an even number of clients, the second
    middle value is the next one above the first, or (where the column's listers took the
    next spreads) searched for too."""
    if request.param == "search for the second middle value":
        monkeypatch.setattr(uo, "NEXT_STEPS", 1)
    elif request.param == "one recount of the listers":
        monkeypatch.setattr(uo, "BELOW_STEPS", 1)
    if request.param.startswith("sort"):
        monkeypatch.setattr(uo, "DENSE_LISTERS", 0 if "every" in request.param else 1)
        monkeypatch.setattr(uo, "DENSE_SHARE", 10 ** 6)
    elif request.param != "as configured":   # these clients are few: no column is searched
        monkeypatch.setattr(uo, "DENSE_LISTERS", 10 ** 6)
    return request.param


def test_median_and_distances_equal_the_dense_ones_bit_for_bit(median_path):
    checked = 0
    for i, clients in enumerate(cases()):
        present = with_present(clients, i)
        union = rules._union(clients)
        e = ur.union_entries(clients, present, union)
        ids, probs, mult = rules.union_support(clients, present, union)
        assert torch.equal(ids, e.ids) and torch.equal(mult, e.mult)
        assert torch.equal(ur.combine(e, "median"), rules.median(probs, present, mult)), i
        tv, agree = ur.consensus_distance(e)
        want_tv, want_agree = rules.consensus_distance(probs, present, mult)
        assert torch.equal(agree, want_agree), i
        assert torch.allclose(tv, want_tv, atol=1e-12, rtol=0, equal_nan=True), i
        assert torch.equal(tv.isnan(), ~present)
        checked += 1
    assert checked == 28


@pytest.mark.parametrize("rule,params", [
    ("mean", {}), ("confidence", {}), ("confidence", {"measure": "neg_entropy", "tau": 0.5}),
    ("entropy-reduction", {"temperature": 0.3}), ("weighted", None)])
def test_weighted_rules_equal_the_dense_ones_to_rounding(rule, params):
    for i, clients in enumerate(cases()):
        present = with_present(clients, i)
        union = rules._union(clients)
        e = ur.union_entries(clients, present, union)
        _, probs, mult = rules.union_support(clients, present, union)
        p = params if params is not None else \
            {"counts": [float(j + 1) for j in range(len(clients))]}
        want = rules.RULES[rule](probs, present, mult=mult, **dict(p))
        got = ur.combine(e, rule, **dict(p))
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-14, rtol=1e-11), (i, (got - want).abs().max())
        assert torch.allclose(rules.row_sum(got * mult), torch.ones(len(got), dtype=got.dtype))


def test_confidence_scores_max_bit_for_bit_and_entropy_to_rounding():
    for i, clients in enumerate(cases()):
        present = with_present(clients, i)
        union = rules._union(clients)
        e = ur.union_entries(clients, present, union)
        _, probs, mult = rules.union_support(clients, present, union)
        for measure in ("max", "neg_entropy"):
            got = torch.where(present, ur.confidence_scores(e, measure), 0)
            want = torch.where(present, rules.confidence_scores(probs, measure, mult), 0)
            if measure == "max":
                assert torch.equal(got, want), i
            else:
                assert torch.allclose(got, want, atol=1e-12), i


@pytest.mark.parametrize("trim", [0.0, 0.1, 0.2, 0.34, 0.49])
def test_trimmed_mean_equals_the_dense_one_to_rounding(median_path, trim):
    """Every path of the order statistics (closed form, search, sort) gives the values that
    bound the kept ones; ties at either bound, clients absent, tails of zero."""
    for i, clients in enumerate(cases()):
        present = with_present(clients, i)
        union = rules._union(clients)
        e = ur.union_entries(clients, present, union)
        _, probs, mult = rules.union_support(clients, present, union)
        want = rules.trimmed_mean(probs, present, trim=trim, mult=mult)
        got = ur.combine(e, "trimmed-mean", trim=trim)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-14, rtol=1e-11), (i, (got - want).abs().max())


def test_trimmed_mean_by_hand():
    """Five clients over a vocabulary of 4; each lists id 0 and id 1, the rest is its tail
    spread over ids 2 and 3. trim 0.2 drops the lowest and the highest value of each column:
    column 0 holds 0.1, 0.2, 0.3, 0.4, 0.5 -> mean(0.2, 0.3, 0.4) = 0.3; column 1 holds
    0.5, 0.5, 0.5, 0.1, 0.1 -> mean(0.1, 0.5, 0.5) = 1.1 / 3; outside (ids 2, 3; the spreads
    (1 - p0 - p1) / 2): 0.2, 0.15, 0.1, 0.25, 0.2 -> mean(0.15, 0.2, 0.2)."""
    v = 4
    p0 = [0.1, 0.2, 0.3, 0.4, 0.5]
    p1 = [0.5, 0.5, 0.5, 0.1, 0.1]
    clients = [SparseRows(torch.tensor([[0, 1]]), torch.tensor([[a, b]]).log(),
                          torch.tensor([1 - a - b]).log(), v) for a, b in zip(p0, p1)]
    e = ur.union_entries(clients, torch.ones(5, 1, dtype=torch.bool), rules._union(clients))
    raw = ur.trimmed_mean(e, 0.2)
    want = torch.tensor([[0.3, 1.1 / 3, 0.55 / 3]], dtype=torch.float64)
    assert torch.allclose(raw[:, :-1], want[:, :2], atol=1e-7)
    assert torch.allclose(raw[:, -1], want[:, 2], atol=1e-7)
    # trim 0: the plain mean
    assert torch.allclose(ur.trimmed_mean(e, 0.0)[0, :2],
                          torch.tensor([0.3, 0.34], dtype=torch.float64), atol=1e-7)


def test_median_by_hand():
    """Three clients over a vocabulary of 6; the union is {0, 2, 5}. Client values per column
    (listed, or the spread of the tail over the ids not listed):
    a: 0.5, 0.3, 0.05 (tail 0.2 over 4 ids); b: 0.05, 0.6, 0.2 (tail 0.2 / 4);
    c: 0.1, 0.1, 0.5 (lists id 5 alone, its tail 0.5 over 5 ids).
    Medians: column 0: median(0.5, 0.05, 0.1) = 0.1; column 2: median(0.3, 0.6, 0.1) = 0.3;
    column 5: median(0.05, 0.2, 0.5) = 0.2; outside: median(0.05, 0.05, 0.1) = 0.05."""
    v = 6
    a = SparseRows(torch.tensor([[0, 2]]), torch.tensor([[0.5, 0.3]]).log(),
                   torch.tensor([0.2]).log(), v)
    b = SparseRows(torch.tensor([[2, 5]]), torch.tensor([[0.6, 0.2]]).log(),
                   torch.tensor([0.2]).log(), v)
    c = SparseRows(torch.tensor([[5]]), torch.tensor([[0.5]]).log(), torch.tensor([0.5]).log(), v)
    present = torch.ones(3, 1, dtype=torch.bool)
    e = ur.union_entries([a, b, c], present, rules._union([a, b, c]))
    raw = ur.median(e)
    assert torch.allclose(raw, torch.tensor([[0.1, 0.3, 0.2, 0.05]], dtype=torch.float64),
                          atol=1e-7)
    assert e.mult.tolist() == [[1.0, 1.0, 1.0, 3.0]]
    # a is absent: the median of two is the mean of the two values
    present[0] = False
    e = ur.union_entries([a, b, c], present, rules._union([a, b, c]))
    assert torch.allclose(ur.median(e), torch.tensor([[0.075, 0.35, 0.35, 0.075]],
                                                     dtype=torch.float64), atol=1e-7)


@pytest.mark.parametrize("seed", range(12))
def test_selected_order_statistics_equal_the_sorted_ones(seed):
    """The wide columns' order statistics by selection from the smallest or the largest
    values (one selection for several ranks, or one per rank) equal a sort's, with many ties
    and absent clients (inf) in every row."""
    g = torch.Generator().manual_seed(seed)
    c, k = 300, 17 + seed * 7
    values = torch.randint(0, 5 + seed, (c, k), generator=g).double() / 8
    m = torch.randint(1, k + 1, (c,), generator=g)
    values[torch.arange(k)[None] >= m[:, None]] = math.inf
    values = values.gather(1, torch.rand(c, k, generator=g).argsort(-1))  # absent anywhere
    want = values.sort(-1).values
    trim = (m * 0.2).long()
    for ranks in ([(m - 1) // 2, m // 2], [trim, m - 1 - trim],
                  [torch.zeros_like(m)], [m - 1],
                  [(torch.rand(c, generator=g) * m).long() for _ in range(3)]):
        got = uo._select(values, ranks, m)
        for r, v in zip(ranks, got):
            assert torch.equal(v, want.gather(1, r[:, None]).squeeze(1)), seed
    low, high = uo._reach([m - 1], m)
    assert (low, high) == (int(m.max()), 1)   # the largest value: one from the top


def test_the_aggregated_rows_equal_the_dense_path_after_the_codec(monkeypatch):
    """Through aggregate_sparse and the top-k codec, the teacher's rows are those of the dense
    union support for every rule (here bit for bit: the sums differ below the fp32 rows'
    resolution), and so are the outlier report's agreements."""
    clients = zipf_clients(40, 60, vocab=3000, k=8, seed=4)
    present = torch.rand(40, 60, generator=torch.Generator().manual_seed(1)) > 0.2
    present[0] = True
    codec = TopKCodec(k=8)
    for rule, params in [("confidence", {}), ("median", {}), ("mean", {}),
                         ("entropy-reduction", {}), ("weighted", {"counts": [1.0] * 40}),
                         ("trimmed-mean", {"trim": 0.1})]:
        sparse_d: list = []
        got = codec.encode_sparse(rules.aggregate_sparse(clients, present, rule,
                                                         distances=sparse_d, **params))
        with monkeypatch.context() as mp:
            mp.setattr(ur, "combine", lambda e, rule, **p: rules.RULES[rule](
                rules.union_support(clients, present)[1], present, mult=e.mult, **p))
            mp.setattr(ur, "consensus_distance", lambda e, cons=None: rules.consensus_distance(
                rules.union_support(clients, present)[1], present, e.mult))
            dense_d: list = []
            want = codec.encode_sparse(rules.aggregate_sparse(clients, present, rule,
                                                              distances=dense_d,
                                                              max_elements=0, **params))
        for name in want:
            assert torch.equal(got[name], want[name]), (rule, name)
        assert torch.equal(sparse_d[0][1], dense_d[0][1])
        assert torch.allclose(sparse_d[0][0], dense_d[0][0], atol=1e-12, equal_nan=True)


def test_a_rule_without_a_sparse_form_is_refused_by_name():
    clients = zipf_clients(3, 4, vocab=50, k=4)
    e = ur.union_entries(clients, torch.ones(3, 4, dtype=torch.bool), rules._union(clients))
    with pytest.raises(ValueError, match="rule 'coverage' has no sparse form"):
        ur.combine(e, "coverage")
    with pytest.raises(ValueError, match=r"trim must be in \[0, 0.5\), got 0.5"):
        ur.combine(e, "trimmed-mean", trim=0.5)
    with pytest.raises(ValueError, match="counts must be 3 non-negative numbers"):
        ur.combine(e, "weighted", counts=[1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="tau must be positive"):
        ur.combine(e, "confidence", tau=0.0)
    with pytest.raises(ValueError, match="confidence measure must be one of"):
        ur.combine(e, "confidence", measure="entropy")


def test_each_clients_most_likely_column_is_the_dense_rows_argmax():
    """Equal values go to the first column: a listed id, the first union column a client did
    not list, a padding column of a narrow union (value 0), or the last column (every id
    outside the union); row 1 below: both clients list the whole union {3}, and their spread
    over the three other ids beats what they listed, so the last column wins."""
    v = 4
    a = SparseRows(torch.tensor([[0, 1], [3, 3]]),
                   torch.tensor([[0.3, 0.3], [0.01, 0.0]]).log(),
                   torch.tensor([0.4, 0.99]).log(), v)
    b = SparseRows(torch.tensor([[2, 0], [3, 0]]),
                   torch.tensor([[0.5, 0.0], [0.1, 0.0]]).log(), torch.tensor([0.5, 0.9]).log(), v)
    crafted = [([a, b], torch.ones(2, 2, dtype=torch.bool))]
    for i, clients in enumerate(cases()):
        crafted.append((clients, with_present(clients, i)))
    for clients, present in crafted:
        e = ur.union_entries(clients, present, rules._union(clients))
        probs = rules.union_support(clients, present)[1]
        got = ur._client_argmax(e)
        assert torch.equal(got[present], probs.argmax(-1)[present])
    e = ur.union_entries([a, b], crafted[0][1], rules._union([a, b]))
    assert e.ids.tolist() == [[0, 1, 2], [3, 4, 4]]
    assert ur._client_argmax(e)[:, 1].tolist() == [3, 3]
