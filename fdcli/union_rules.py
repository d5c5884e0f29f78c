"""The aggregation rules on sparse token rows, working on the listed entries alone.

:func:`fdcli.rules.union_support` puts K clients' rows over a dense ``[K, N, U + 1]`` array,
in which almost every entry is a client's spread tail (its tail mass over the ids it did not
list) repeated over the union. With many clients that share few ids (a real vocabulary), that
array and the coordinate-wise median that sorts it dominated ``fd aggregate``. Here the same
rules run on the E listed entries (client, row, union column, probability) and each client's
spread, in O(E + N U) memory and work:

- weighted averages (mean, confidence, weighted, entropy-reduction): each column starts at
  the weighted sum of the spreads and each listed entry adds ``w (p - spread)``;
- the coordinate-wise median: an order statistic of the row's sorted spreads with the column's
  listers' spreads taken out and their listed probabilities put in, found by a search over
  a window of the sorted spreads as wide as the column's listers; the values are the dense
  array's, bit for bit;
- the outlier distances: each client's total variation from the median through the row's
  sorted consensus and prefix sums, and its most likely column without the dense row.

The results equal the dense rules' (``tests/test_union_rules.py``): the median, the top-class
agreements and the ``max`` confidence scores bit for bit; sums to within rounding (the
order of summation differs). Pure torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .sparse_rows import SparseRows, row_sum

#: the rules computed here; the others (trimmed-mean) use the dense union support
SPARSE_RULES = ("mean", "confidence", "weighted", "entropy-reduction", "median")


@dataclass
class UnionEntries:
    """K clients' rows over one union support per row, as listed entries.

    ``ids`` ``[N, U]``: the union (ascending, padded with V); ``count`` ``[N]`` its size;
    ``mult`` ``[N, U + 1]`` as :func:`fdcli.rules.union_support` gives it. ``spread``
    ``[K, N]``: each present client's probability for an id it did not list (0 where absent);
    ``listed`` ``[K, N]``: how many ids it listed; ``first_gap`` ``[K, N]``: the first union
    column it did not list (``U`` if none). The entries (present clients' listed ids only,
    client by client): ``client``, ``row``, ``col`` (union column) and ``prob``, all ``[E]``."""

    ids: torch.Tensor
    count: torch.Tensor
    mult: torch.Tensor
    present: torch.Tensor
    spread: torch.Tensor
    listed: torch.Tensor
    first_gap: torch.Tensor
    client: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    prob: torch.Tensor
    num_classes: int

    @property
    def width(self) -> int:
        """Columns of a dense row: the union's and one for every other id."""
        return self.ids.shape[1] + 1

    def __post_init__(self) -> None:
        n, u = self.ids.shape
        #: each entry's (client, row) as one index into ``[K * N]``, and its column in ``[N * U]``
        self.cell = self.client * self.present.shape[1] + self.row
        self.flat_col = self.row * u + self.col

    def at_entries(self, per_client_row: torch.Tensor) -> torch.Tensor:
        """A ``[K, N]`` value at each entry."""
        return per_client_row.reshape(-1).index_select(0, self.cell)


def union_entries(clients: list[SparseRows], present: torch.Tensor, union) -> UnionEntries:
    """The listed entries of ``clients`` over the union ``union`` (:func:`fdcli.rules._union`:
    each client's listed ids, the union per row and its size), row by row and, within a row,
    client by client. The spreads and probabilities are computed as
    :func:`fdcli.rules.union_support` computes them."""
    listed_ids, allids, count = union
    v = clients[0].num_classes
    k, n = present.shape
    width = max(int(count.max()) if n else 0, 1)
    ids = allids[:, :width].contiguous()
    most = max(c.ids.shape[1] for c in clients)

    def padded(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, most - t.shape[1]), value=value)

    own = torch.stack([padded(o, v) for o in listed_ids])                  # [K, N, most]
    logp = torch.stack([padded(c.logp, -math.inf) for c in clients])
    mine = own < v
    spread = torch.stack([c.tail_logp for c in clients]).double().exp() \
        / (v - mine.sum(-1)).clamp(min=1).double()
    spread = torch.where(present, spread, torch.zeros_like(spread))
    mine &= present[:, :, None]
    # row-major: [N, K * most], so that a row's entries sit together
    pos = torch.searchsorted(ids, own.permute(1, 0, 2).reshape(n, k * most))
    pos = torch.where(mine.permute(1, 0, 2).reshape(n, k * most), pos, width)
    # the first union column each client did not list: how many of 0, 1, 2, ... it did
    seen = torch.zeros(n, k, most + 2, dtype=torch.bool)
    seen.scatter_(2, pos.view(n, k, most).clamp(max=most + 1), True)
    first_gap = (~seen[:, :, :most + 1]).byte().argmax(-1).T
    row, flat = (pos < width).nonzero(as_tuple=True)
    client = flat.div(most, rounding_mode="floor")
    col = pos.view(-1).index_select(0, row * (k * most) + flat)
    prob = logp.permute(1, 0, 2).reshape(n, k * most).reshape(-1) \
        .index_select(0, row * (k * most) + flat).double().exp()
    mult = torch.cat([(ids < v).double(), (v - count).double()[:, None]], -1)
    return UnionEntries(ids, count, mult, present, spread, mine.sum(-1), first_gap.contiguous(),
                        client, row, col, prob, v)


def _in_client_order(values: torch.Tensor) -> torch.Tensor:
    """The sum over the first dimension, one client after another: a row's sum does not
    depend on the other rows (torch's vectorised ``sum`` may group by the batch's shape)."""
    total = values[0].clone()
    for v in values[1:]:
        total += v
    return total


def weighted_average(e: UnionEntries, weights: torch.Tensor) -> torch.Tensor:
    """``[N, U + 1]``: sum_k w_k p_k / sum_k w_k over present clients, unnormalised columns
    as :func:`fdcli.rules.weighted_average` makes them before its last normalisation."""
    w = torch.where(e.present, weights, torch.zeros_like(weights)).double()
    w = w / _in_client_order(w).clamp_min(1e-30)
    base = _in_client_order(w * e.spread)
    out = base[:, None].expand(len(base), e.width).clone()
    out[:, :-1].masked_fill_(~(e.ids < e.num_classes), 0.0)
    step = e.at_entries(w) * (e.prob - e.at_entries(e.spread))
    out.view(-1).index_add_(0, e.row * e.width + e.col, step)
    return out


def confidence_scores(e: UnionEntries, measure: str) -> torch.Tensor:
    """:func:`fdcli.rules.confidence_scores` over the entries, ``[K, N]``."""
    k, n = e.present.shape
    if measure == "max":
        top = torch.zeros(k * n, dtype=torch.float64)
        top.scatter_reduce_(0, e.cell, e.prob, "amax")
        # the spread counts where an id goes unlisted: in the union, or outside it
        unlisted = (e.count[None] > e.listed) | (e.num_classes > e.count)[None]
        return torch.maximum(top.view(k, n),
                             torch.where(unlisted, e.spread, torch.zeros_like(e.spread)))
    if measure == "neg_entropy":
        def plogp(p):
            return p * p.clamp_min(1e-30).log()
        out = (e.num_classes - e.listed).double() * plogp(e.spread)
        out.view(-1).index_add_(0, e.cell, plogp(e.prob))
        return out
    raise ValueError(f"confidence measure must be one of ('max', 'neg_entropy'), got "
                     f"{measure!r}")


def _sorted_spreads(e: UnionEntries):
    """Per row: the present clients' spreads sorted (``inf`` last), and for each position
    the number of spreads below its value and at most its value."""
    s = torch.where(e.present, e.spread, torch.full_like(e.spread, math.inf)).T.contiguous()
    s = s.sort(-1).values
    return s, torch.searchsorted(s, s), torch.searchsorted(s, s, right=True)


def _order_statistic(e: UnionEntries, rank: torch.Tensor, s, below, upto,
                     skip: torch.Tensor) -> torch.Tensor:
    """``[N, U]``: for every union column, the ``rank``-th smallest (0-based, ``rank`` per
    row) of the present clients' values there: the row's spreads with the column's listers'
    spreads taken out and their listed probabilities put in.

    With g(x) the number of those values <= x, the answer lies above the last sorted spread
    x with g(x) <= rank. That spread's position is searched for in a window of the sorted
    spreads as wide as the column's listers (l of them move g by at most l), then the answer
    is the next sorted spread or one of the listed probabilities below it. Columns where
    ``skip`` (``[N * U]``) is true are left to the caller (their values are meaningless)."""
    n, u = e.ids.shape
    k = s.shape[1]
    m = e.present.sum(0)
    col = e.flat_col
    a, b = e.at_entries(e.spread), e.prob
    listers = torch.bincount(col, minlength=n * u)
    crow = torch.arange(n).repeat_interleave(u)
    r = rank.index_select(0, crow)
    lo = (r - listers).clamp(min=0)
    hi = torch.minimum(m.index_select(0, crow), r + listers)
    s_flat, below_flat, upto_flat = s.view(-1), below.view(-1), upto.view(-1)

    def pick(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, i)

    # the search, on the columns whose window is still open and on their listers only
    x_at = torch.empty(n * u, dtype=s.dtype)
    moved = torch.zeros(n * u, dtype=torch.int64)
    open_ = (lo < hi) & ~skip
    active = open_.nonzero().squeeze(1)
    ent = pick(open_, col).nonzero().squeeze(1)
    while len(active):
        lo_a, hi_a = pick(lo, active), pick(hi, active)
        mid = (lo_a + hi_a) // 2
        at = pick(crow, active) * k + mid
        x_at.index_copy_(0, active, pick(s_flat, at))
        at_e = pick(col, ent)
        x = pick(x_at, at_e)
        moved.index_add_(0, at_e, (pick(b, ent) <= x).long() - (pick(a, ent) <= x).long())
        reach = pick(upto_flat, at) + pick(moved, active) >= pick(r, active) + 1
        moved.index_fill_(0, active, 0)
        hi_a = torch.where(reach, mid, hi_a)
        lo_a = torch.where(reach, lo_a, mid + 1)
        hi.index_copy_(0, active, hi_a)
        lo.index_copy_(0, active, lo_a)
        done = lo_a >= hi_a
        open_.index_fill_(0, active[done], False)
        active = active[~done]
        ent = ent[pick(open_, at_e)]
    # the first position of its value: g depends on the value alone
    base = crow * k
    inside = lo < pick(m, crow)
    at = torch.where(inside, pick(below_flat, base + lo.clamp(max=k - 1)), lo)
    high = torch.where(inside, pick(s_flat, base + at.clamp(max=k - 1)),
                       torch.full((n * u,), math.inf, dtype=s.dtype))
    after = at > 0
    prev = base + (at - 1).clamp(min=0)
    low = torch.where(after, pick(s_flat, prev), torch.full_like(high, -math.inf))
    # g(low): the spreads <= low, less the listers' spreads <= low, plus their probabilities
    low_e = pick(low, col)
    g_low = torch.where(after, pick(upto_flat, prev), 0).index_add_(
        0, col, (b <= low_e).long() - (a <= low_e).long())
    need = r - g_low  # how many values lie in (low, answer)
    # listed probabilities strictly between low and high, in order within each column
    between = ((b > low_e) & (b < pick(high, col))).nonzero().squeeze(1)
    cb, vb = pick(col, between), pick(b, between)
    order = vb.sort(stable=True).indices
    order = pick(order, pick(cb, order).sort(stable=True).indices)
    cb, vb = pick(cb, order), pick(vb, order)
    place = torch.arange(len(cb)) - torch.searchsorted(cb, cb)
    hit = (place == pick(need, cb)).nonzero().squeeze(1)
    out = high.index_copy_(0, pick(cb, hit), pick(vb, hit))
    return out.view(n, u)


#: how many sorted spreads :func:`_next_statistic` steps over (each one taken by the column's
#: listers) before it searches instead
NEXT_STEPS = 4


def _next_statistic(e: UnionEntries, value: torch.Tensor, rank: torch.Tensor, s, below,
                    upto, skip: torch.Tensor) -> torch.Tensor:
    """``[N, U]``: the ``rank``-th smallest value of each union column, where ``value`` holds
    the one before it (the two middle values of an even number of clients): ``value`` again
    if more than ``rank`` values are at most it, else the smallest value above it (a listed
    probability, or the next sorted spread unless the column's listers took every copy of it;
    those few columns are searched for as :func:`_order_statistic` does)."""
    n, u = e.ids.shape
    k = s.shape[1]
    col, b = e.flat_col, e.prob
    a = e.at_entries(e.spread)
    v = value.reshape(-1)
    crow = torch.arange(n).repeat_interleave(u)
    spreads_upto = torch.searchsorted(s, value.reshape(n, u).contiguous(), right=True).view(-1)
    v_e = v.index_select(0, col)
    g = spreads_upto.clone().index_add_(0, col, (b <= v_e).long() - (a <= v_e).long())
    again = g >= rank.index_select(0, crow) + 1
    inf = torch.tensor(math.inf, dtype=torch.float64)
    listed_above = torch.full((n * u,), math.inf, dtype=torch.float64).scatter_reduce_(
        0, col, torch.where(b > v_e, b, inf), "amin")
    # the next sorted spread that some client other than the column's listers holds
    m = e.present.sum(0).index_select(0, crow)
    j = spreads_upto
    for _ in range(NEXT_STEPS):
        more = j < m
        at = crow * k + j.clamp(max=k - 1)
        spread_above = torch.where(more, s.view(-1).index_select(0, at), inf)
        group_end = torch.where(more, upto.view(-1).index_select(0, at), j)
        taken = torch.zeros(n * u, dtype=torch.int64).index_add_(
            0, col, (a == spread_above.index_select(0, col)).long())
        blocked = more & (group_end - j <= taken) & ~again & ~skip
        if not bool(blocked.any()):
            break
        j = torch.where(blocked, group_end, j)
    out = torch.where(again, v, torch.minimum(listed_above, spread_above))
    search = blocked & (listed_above >= spread_above)
    if bool(search.any()):
        found = _order_statistic(e, rank, s, below, upto, skip | ~search)
        out = torch.where(search, found.view(-1), out)
    return out.view(n, u)


#: columns listed by more than this share of the clients (and by at least
#: :data:`DENSE_LISTERS` clients) get the median by sorting their clients' values, as the
#: dense rule does; a search over so wide a window costs more than the sort
DENSE_SHARE = 8
DENSE_LISTERS = 16


def median(e: UnionEntries) -> torch.Tensor:
    """``[N, U + 1]``: the coordinate-wise median of the present clients (the mean of the two
    middle values when their number is even), unnormalised, as :func:`fdcli.rules.median`
    computes it, bit for bit."""
    s, below, upto = _sorted_spreads(e)
    k, n = e.present.shape
    u = e.ids.shape[1]
    m = e.present.sum(0)
    lo, hi = (m - 1) // 2, m // 2
    col = e.flat_col
    wide = torch.bincount(col, minlength=n * u) > max(DENSE_LISTERS, k // DENSE_SHARE)
    if bool((wide | ~(e.ids < e.num_classes).view(-1)).all()):
        low = high = torch.zeros(n, u, dtype=torch.float64)
    else:
        low = _order_statistic(e, lo, s, below, upto, wide)
        high = low if bool((lo == hi).all()) else \
            _next_statistic(e, low, hi, s, below, upto, wide | ~(lo < hi).repeat_interleave(u))
    if bool(wide.any()):
        # the columns many clients list: each one's K values sorted
        cols = wide.nonzero().squeeze(1)
        rows = cols.div(u, rounding_mode="floor")
        values = torch.where(e.present, e.spread, math.inf).T.contiguous().index_select(0, rows)
        slot = torch.full((n * u,), -1)
        slot[cols] = torch.arange(len(cols))
        mine = (slot.index_select(0, col) >= 0).nonzero().squeeze(1)
        values.view(-1).index_copy_(0, slot[col[mine]] * k + e.client[mine], e.prob[mine])
        values = values.sort(-1).values
        low = low.clone()
        low.view(-1)[cols] = values.gather(1, lo[rows, None]).squeeze(1)
        high = high.clone()
        high.view(-1)[cols] = values.gather(1, hi[rows, None]).squeeze(1)
    out = torch.empty(n, e.width, dtype=torch.float64)
    out[:, :-1] = (low + high) / 2
    out[:, :-1].masked_fill_(~(e.ids < e.num_classes), 0.0)
    out[:, -1] = (s.gather(1, lo[:, None]) + s.gather(1, hi[:, None])).squeeze(1) / 2
    return out


def _client_argmax(e: UnionEntries) -> torch.Tensor:
    """``[K, N]``: each client's most likely column of its dense row over the union (the
    first of equal ones), as ``argmax`` over :func:`fdcli.rules.union_support`'s row."""
    k, n = e.present.shape
    u = e.ids.shape[1]
    top = torch.full((k * n,), -math.inf, dtype=torch.float64)
    top.scatter_reduce_(0, e.cell, e.prob, "amax").view(k, n)
    best = torch.maximum(top.view(k, n), e.spread)   # the last column holds the spread
    first = torch.full((k * n,), u + 1)
    hit = e.prob == e.at_entries(best)
    first.scatter_reduce_(0, e.cell[hit], e.col[hit], "amin")
    first = first.view(k, n)
    is_spread = e.spread == best
    gap = torch.where(is_spread & (e.first_gap < e.count[None]), e.first_gap, u + 1)
    pad = torch.where((best == 0) & (e.count < u)[None], e.count[None].expand(k, n), u + 1)
    last = torch.where(is_spread, u, u + 1)
    return torch.minimum(torch.minimum(first, gap), torch.minimum(pad, last))


def consensus_distance(e: UnionEntries) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fdcli.rules.consensus_distance` over the entries: ``(tv, agree)``, ``[K, N]``,
    against the normalised coordinate-wise median."""
    from .rules import _normalise

    cons = _normalise(median(e), e.mult)
    n, u = e.ids.shape
    inunion = e.ids < e.num_classes
    c_u = torch.where(inunion, cons[:, :-1], torch.full_like(cons[:, :-1], math.inf))
    ordered = c_u.sort(-1).values
    prefix = torch.cat([torch.zeros(n, 1, dtype=torch.float64),
                        torch.where(torch.isfinite(ordered), ordered, 0.0).cumsum(-1)], -1)
    x = e.spread.T.contiguous()                                   # [N, K]
    at = torch.searchsorted(ordered, x)
    cnt = e.count[:, None].double()
    below = prefix.gather(1, at)
    total = prefix.gather(1, e.count[:, None])
    # sum over the union of |x - cons_j|, as if the client had listed nothing
    spread_all = x * at - below + (total - below) - x * (cnt - at)
    tv = spread_all.T.contiguous()
    tv += (e.num_classes - e.count).double()[None] * (e.spread - cons[:, -1][None]).abs()
    c_e = cons[e.row, e.col]
    fix = (e.prob - c_e).abs() - (e.at_entries(e.spread) - c_e).abs()
    tv.view(-1).index_add_(0, e.cell, fix)
    tv = 0.5 * tv
    agree = (_client_argmax(e) == cons.argmax(-1)[None]) & e.present
    return torch.where(e.present, tv, torch.full_like(tv, math.nan)), agree


def combine(e: UnionEntries, rule: str, **params) -> torch.Tensor:
    """``[N, U + 1]``: ``rule`` (one of :data:`SPARSE_RULES`) over the entries, the columns as
    the dense rule returns them (the last stands for each id outside the union)."""
    from . import rules

    k, n = e.present.shape
    if not bool(e.present.any(0).all()):
        raise ValueError("every example needs at least one client that has it")
    if rule == "median":
        return rules._normalise(median(e), e.mult)
    if rule in ("mean", "entropy-reduction"):
        temperature = params.pop("temperature", 0.1) if rule == "entropy-reduction" else None
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        out = rules._normalise(weighted_average(e, torch.ones(k, n, dtype=torch.float64)),
                               e.mult)
        return out if temperature is None else rules.sharpen(out, temperature, e.mult)
    if rule == "weighted":
        counts = torch.as_tensor(params["counts"], dtype=torch.float64)
        if counts.shape != (k,) or bool((counts < 0).any()):
            raise ValueError(f"counts must be {k} non-negative numbers, got {counts}")
        return rules._normalise(weighted_average(e, counts[:, None].expand(k, n)), e.mult)
    if rule == "confidence":
        measure, tau = params.get("measure", "max"), params.get("tau", 1.0)
        w = rules.softmax_weights(confidence_scores(e, measure), e.present, tau)
        return rules._normalise(weighted_average(e, w), e.mult)
    raise ValueError(f"rule {rule!r} has no sparse form; use one of {SPARSE_RULES}")


__all__ = ["SPARSE_RULES", "UnionEntries", "union_entries", "combine", "consensus_distance",
           "median", "weighted_average", "confidence_scores", "row_sum"]
