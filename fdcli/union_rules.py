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
  listers' spreads taken out and their listed probabilities put in: in closed form for a
  column one client lists; for a few listers, where each lists more than the answer, the
  row's spread of that rank with the listers' taken out, else by a search over a window of
  the sorted spreads as wide as the column's listers; by sorting the column's values for
  many; the values are the dense array's, bit for bit;
- the trimmed mean: the two order statistics that bound the kept values found the same way,
  the spreads between them a difference of the row's sorted spreads' prefix sums, corrected
  for the column's listers;
- the outlier distances: each client's total variation from the median through the row's
  sorted consensus and prefix sums, and its most likely column without the dense row.

The results equal the dense rules' (``tests/test_union_rules.py``): the median, the top-class
agreements and the ``max`` confidence scores bit for bit; sums (the weighted averages, the
trimmed mean) to within rounding (the order of summation differs). Pure torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import rules
from .sparse_rows import SparseRows

#: the rules computed here: every rule that applies to sparse rows
SPARSE_RULES = ("mean", "confidence", "weighted", "entropy-reduction", "median", "trimmed-mean")


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
    each client's listed ids, the union per row, its size and each listed id's column in it),
    row by row and, within a row, client by client. The spreads and probabilities are
    computed as :func:`fdcli.rules.union_support` computes them."""
    listed_ids, allids, count, where = union
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
    pos = torch.where(mine.permute(1, 0, 2).reshape(n, k * most), where, width)
    # the first union column each client did not list: how many of 0, 1, 2, ... it did
    seen = torch.zeros(n, k, most + 2, dtype=torch.bool)
    seen.scatter_(2, pos.view(n, k, most).clamp(max=most + 1).long(), True)
    first_gap = (~seen[:, :, :most + 1]).byte().argmax(-1).T
    row, flat = (pos < width).nonzero(as_tuple=True)
    client = flat.div(most, rounding_mode="floor")
    col = pos.view(-1).index_select(0, row * (k * most) + flat).long()
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
    raise ValueError(f"confidence measure must be one of {rules.CONFIDENCE_MEASURES}, got "
                     f"{measure!r}")


@dataclass
class _Spreads:
    """Per row, the present clients' spreads sorted (``inf`` last), flat ``[N * K]``: the
    values, for each position the number of spreads below its value (``below``) and at most
    its value (``upto``); ``place`` ``[N, K]``: each client's position; ``m`` ``[N]``: the
    present clients."""

    values: torch.Tensor
    below: torch.Tensor
    upto: torch.Tensor
    place: torch.Tensor
    m: torch.Tensor
    k: int

    @classmethod
    def of(cls, e: UnionEntries) -> "_Spreads":
        k, n = e.present.shape
        raw = torch.where(e.present, e.spread, torch.full_like(e.spread, math.inf)).T
        s, order = raw.contiguous().sort(stable=True, dim=-1)
        place = torch.empty_like(order).scatter_(1, order, torch.arange(k).expand(n, k))
        return cls(s.view(-1), torch.searchsorted(s, s).view(-1),
                   torch.searchsorted(s, s, right=True).view(-1), place, e.present.sum(0), k)

    def at(self, rows: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The sorted spread at position ``i`` of row ``rows`` (``i`` clamped into the row)."""
        return self.values.index_select(0, rows * self.k + i.clamp(0, self.k - 1))


def _pick(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, i)


def _entries_of(size: int, ecol: torch.Tensor, which: torch.Tensor):
    """The entries (indices into ``ecol``) whose column is among ``which`` (indices into a
    space of ``size`` columns), and their column's index in ``which``."""
    slot = torch.full((size,), -1)
    slot[which] = torch.arange(len(which))
    loc = slot.index_select(0, ecol)
    ent = (loc >= 0).nonzero().squeeze(1)
    return ent, _pick(loc, ent)


def _single_lister(e: UnionEntries, rank: torch.Tensor, sp: _Spreads,
                   ent: torch.Tensor) -> torch.Tensor:
    """The ``rank``-th smallest value (``rank`` per row) of the columns that one present
    client lists, one per entry of ``ent``: of the row's sorted spreads S less that client's
    (S'', position p of S out), with its listed probability b put in, it is
    ``min(S''[r], max(b, S''[r - 1]))``."""
    rows = _pick(e.row, ent)
    p = sp.place.view(-1).index_select(0, rows * sp.k + _pick(e.client, ent))
    r, m = _pick(rank, rows), _pick(sp.m, rows)

    def without(i: torch.Tensor) -> torch.Tensor:
        value = sp.at(rows, torch.where(i < p, i, i + 1))
        value = torch.where(i >= m - 1, math.inf, value)
        return torch.where(i < 0, -math.inf, value)

    return torch.minimum(without(r), torch.maximum(_pick(e.prob, ent), without(r - 1)))


def _order_statistic(e: UnionEntries, rank: torch.Tensor, sp: _Spreads, cols: torch.Tensor,
                     ent: torch.Tensor, ecol: torch.Tensor) -> torch.Tensor:
    """The ``rank``-th smallest (0-based, ``rank`` per row) of the present clients' values in
    each union column of ``cols`` (flat ``row * U + column``): the row's spreads with the
    column's listers' spreads taken out and their listed probabilities put in. ``ent``: the
    entries of those columns, ``ecol`` their column's index in ``cols``.

    With g(x) the number of those values <= x, the answer lies above the last sorted spread
    x with g(x) <= rank. That spread's position is searched for in a window of the sorted
    spreads as wide as the column's listers (l of them move g by at most l), then the answer
    is the next sorted spread or one of the listed probabilities below it."""
    u, c = e.ids.shape[1], len(cols)
    a, b = _pick(e.at_entries(e.spread), ent), _pick(e.prob, ent)
    listers = torch.bincount(ecol, minlength=c)
    crow = cols.div(u, rounding_mode="floor")
    r, m = _pick(rank, crow), _pick(sp.m, crow)
    lo = (r - listers).clamp(min=0)
    hi = torch.minimum(m, r + listers)
    # the search, on the columns whose window is still open and on their listers only
    x_at = torch.empty(c, dtype=torch.float64)
    moved = torch.zeros(c, dtype=torch.int64)
    open_ = lo < hi
    active = open_.nonzero().squeeze(1)
    live = _pick(open_, ecol).nonzero().squeeze(1)
    while len(active):
        lo_a, hi_a = _pick(lo, active), _pick(hi, active)
        mid = (lo_a + hi_a) // 2
        at = _pick(crow, active) * sp.k + mid
        x_at.index_copy_(0, active, _pick(sp.values, at))
        at_e = _pick(ecol, live)
        x = _pick(x_at, at_e)
        moved.index_add_(0, at_e, (_pick(b, live) <= x).long() - (_pick(a, live) <= x).long())
        reach = _pick(sp.upto, at) + _pick(moved, active) >= _pick(r, active) + 1
        moved.index_fill_(0, active, 0)
        hi_a = torch.where(reach, mid, hi_a)
        lo_a = torch.where(reach, lo_a, mid + 1)
        hi.index_copy_(0, active, hi_a)
        lo.index_copy_(0, active, lo_a)
        done = lo_a >= hi_a
        open_.index_fill_(0, active[done], False)
        active = active[~done]
        live = live[_pick(open_, at_e)]
    # the first position of its value: g depends on the value alone
    inside = lo < m
    at = torch.where(inside, _pick(sp.below, crow * sp.k + lo.clamp(max=sp.k - 1)), lo)
    high = torch.where(inside, sp.at(crow, at), math.inf)
    after = at > 0
    low = torch.where(after, sp.at(crow, at - 1), -math.inf)
    # g(low): the spreads <= low, less the listers' spreads <= low, plus their probabilities
    low_e = _pick(low, ecol)
    g_low = torch.where(after, _pick(sp.upto, crow * sp.k + (at - 1).clamp(min=0)), 0)
    g_low.index_add_(0, ecol, (b <= low_e).long() - (a <= low_e).long())
    need = r - g_low  # how many values lie in (low, answer)
    # listed probabilities strictly between low and high, in order within each column
    between = ((b > low_e) & (b < _pick(high, ecol))).nonzero().squeeze(1)
    cb, vb = _pick(ecol, between), _pick(b, between)
    order = vb.sort(stable=True).indices
    order = _pick(order, _pick(cb, order).sort(stable=True).indices)
    cb, vb = _pick(cb, order), _pick(vb, order)
    place = torch.arange(len(cb)) - torch.searchsorted(cb, cb)
    hit = (place == _pick(need, cb)).nonzero().squeeze(1)
    return high.index_copy_(0, _pick(cb, hit), _pick(vb, hit))


#: how many sorted spreads :func:`_next_statistic` steps over (each one taken by the column's
#: listers) before it searches instead
NEXT_STEPS = 4


def _next_statistic(e: UnionEntries, value: torch.Tensor, rank: torch.Tensor, sp: _Spreads,
                    cols: torch.Tensor, ent: torch.Tensor, ecol: torch.Tensor) -> torch.Tensor:
    """:func:`_order_statistic` where ``value`` holds the one before (the two middle values of
    an even number of clients): ``value`` again if more than ``rank`` values are at most it,
    else the smallest value above it (a listed probability, or the next sorted spread unless
    the column's listers took every copy of it; those few columns are searched for)."""
    u, c = e.ids.shape[1], len(cols)
    a, b = _pick(e.at_entries(e.spread), ent), _pick(e.prob, ent)
    crow = cols.div(u, rounding_mode="floor")
    m = _pick(sp.m, crow)
    # the spreads <= value: a search in the row's sorted spreads
    lo, hi = torch.zeros(c, dtype=torch.int64), m.clone()
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        up = sp.at(crow, mid) <= value
        lo, hi = torch.where(up & (lo < hi), mid + 1, lo), torch.where(up | (lo >= hi), hi, mid)
    spreads_upto = lo
    v_e = _pick(value, ecol)
    g = spreads_upto.clone().index_add_(0, ecol, (b <= v_e).long() - (a <= v_e).long())
    again = g >= _pick(rank, crow) + 1
    listed_above = torch.full((c,), math.inf, dtype=torch.float64).scatter_reduce_(
        0, ecol, torch.where(b > v_e, b, math.inf), "amin")
    # the next sorted spread that some client other than the column's listers holds
    j = spreads_upto
    for _ in range(NEXT_STEPS):
        more = j < m
        spread_above = torch.where(more, sp.at(crow, j), math.inf)
        group_end = torch.where(more, _pick(sp.upto, crow * sp.k + j.clamp(max=sp.k - 1)), j)
        taken = torch.zeros(c, dtype=torch.int64).index_add_(
            0, ecol, (a == _pick(spread_above, ecol)).long())
        blocked = more & (group_end - j <= taken) & ~again
        if not bool(blocked.any()):
            break
        j = torch.where(blocked, group_end, j)
    out = torch.where(again, value, torch.minimum(listed_above, spread_above))
    search = (blocked & (listed_above >= spread_above)).nonzero().squeeze(1)
    if len(search):
        sub, sub_col = _entries_of(c, ecol, search)
        out[search] = _order_statistic(e, rank, sp, _pick(cols, search), _pick(ent, sub),
                                       sub_col)
    return out


#: columns listed by more than this share of the clients (and by at least
#: :data:`DENSE_LISTERS` clients) get the median by sorting their clients' values, as the
#: dense rule does; a search over so wide a window costs more than the sort
DENSE_SHARE = 8
DENSE_LISTERS = 16


def _sorted_columns(e: UnionEntries, cols: torch.Tensor, ranks) -> list[torch.Tensor]:
    """The order statistics ``ranks`` (each per row) of the columns ``cols``, by sorting each
    column's K values as the dense rule does."""
    k, n = e.present.shape
    u = e.ids.shape[1]
    rows = cols.div(u, rounding_mode="floor")
    values = torch.where(e.present, e.spread, math.inf).T.contiguous().index_select(0, rows)
    ent, at = _entries_of(n * u, e.flat_col, cols)
    values.view(-1).index_copy_(0, at * k + _pick(e.client, ent), _pick(e.prob, ent))
    values = values.sort(-1).values
    return [values.gather(1, _pick(r, rows)[:, None]).squeeze(1) for r in ranks]


@dataclass
class _Columns:
    """Which way each union column's order statistics are found (flat ``row * U + column``):
    ``single`` entries (of the columns one client lists; ``single_at`` their columns), the
    ``searched`` columns (with their entries ``ent`` and each one's index ``ecol`` in
    ``searched``) and the ``wide`` ones (sorted)."""

    single: torch.Tensor
    single_at: torch.Tensor
    searched: torch.Tensor
    ent: torch.Tensor
    ecol: torch.Tensor
    wide: torch.Tensor

    @classmethod
    def of(cls, e: UnionEntries) -> "_Columns":
        k, (n, u) = e.present.shape[0], e.ids.shape
        listers = torch.bincount(e.flat_col, minlength=n * u)
        union = (e.ids < e.num_classes).view(-1)
        wide = union & (listers > max(DENSE_LISTERS, k // DENSE_SHARE))
        single = union & ~wide & (listers == 1)
        ent = _pick(single, e.flat_col).nonzero().squeeze(1)
        searched = (union & ~wide & ~single).nonzero().squeeze(1)
        return cls(ent, _pick(e.flat_col, ent), searched,
                   *_entries_of(n * u, e.flat_col, searched), wide.nonzero().squeeze(1))


#: how many times :class:`_BelowListed` recounts the listers before a spread (each recount
#: moves past the listers the last one reached) before leaving a column to the search
BELOW_STEPS = 8


class _BelowListed:
    """The order statistics of searched columns where every lister's probability lies at or
    above the answer (a top-k client lists its most likely ids, far above the spreads): the
    answer is then the rank-r spread of the row with the column's listers' spreads taken out,
    ``S[r + d]``, d the listers at sorted positions up to ``r + d``: the smallest fixed point
    of that count, reached by recounting from d = 0."""

    def __init__(self, e: UnionEntries, sp: _Spreads, cols: torch.Tensor, ent: torch.Tensor,
                 ecol: torch.Tensor):
        u = e.ids.shape[1]
        self.sp, self.crow, self.ecol = sp, cols.div(u, rounding_mode="floor"), ecol
        self.place = sp.place.view(-1).index_select(0, _pick(e.row, ent) * sp.k
                                                    + _pick(e.client, ent))
        self.least = torch.full((len(cols),), math.inf, dtype=torch.float64).scatter_reduce_(
            0, ecol, _pick(e.prob, ent), "amin")

    def at(self, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The statistic of rank ``rank`` (per row) of each column, and where it holds."""
        r = _pick(rank, self.crow)
        before = torch.zeros(len(self.crow), dtype=torch.int64)
        for _ in range(BELOW_STEPS):
            count = torch.zeros_like(before).index_add_(
                0, self.ecol, (self.place <= _pick(r + before, self.ecol)).long())
            settled = count == before
            if bool(settled.all()):
                break
            before = count
        j = r + before
        value = self.sp.at(self.crow, j)
        return value, settled & (j < _pick(self.sp.m, self.crow)) & (self.least >= value)


def _statistics(e: UnionEntries, sp: _Spreads, cols: _Columns, ranks: tuple,
                adjacent: bool = False) -> list[torch.Tensor]:
    """The order statistics ``ranks`` (0-based, each per row and in range) of every union
    column, flat ``[N * U]`` (0 off the union). Searched columns take :class:`_BelowListed`
    where it holds, else the search. ``adjacent``: two ranks, the second the next one
    (:func:`_next_statistic` then searches for it from the first)."""
    n, u = e.ids.shape
    out = [torch.zeros(n * u, dtype=torch.float64) for _ in ranks]
    for got, rank in zip(out, ranks):
        got[cols.single_at] = _single_lister(e, rank, sp, cols.single)
    if len(cols.searched):
        below = _BelowListed(e, sp, cols.searched, cols.ent, cols.ecol)
        for i, (got, rank) in enumerate(zip(out, ranks)):
            value, holds = below.at(rank)
            rest = (~holds).nonzero().squeeze(1)
            if len(rest):
                sub, sub_col = _entries_of(len(cols.searched), cols.ecol, rest)
                at, ent = _pick(cols.searched, rest), _pick(cols.ent, sub)
                value[rest] = _next_statistic(e, _pick(out[0], at), rank, sp, at, ent,
                                              sub_col) if adjacent and i else \
                    _order_statistic(e, rank, sp, at, ent, sub_col)
            got[cols.searched] = value
    if len(cols.wide):
        for got, values in zip(out, _sorted_columns(e, cols.wide, ranks)):
            got[cols.wide] = values
    return out


def median(e: UnionEntries) -> torch.Tensor:
    """``[N, U + 1]``: the coordinate-wise median of the present clients (the mean of the two
    middle values when their number is even), unnormalised, as :func:`fdcli.rules.median`
    computes it, bit for bit. A union column that one client lists has it in closed form
    (:func:`_single_lister`), one that many list is sorted (:func:`_sorted_columns`), and
    the others are searched for (:func:`_order_statistic`)."""
    sp = _Spreads.of(e)
    k, n = e.present.shape
    u = e.ids.shape[1]
    lo, hi = (sp.m - 1) // 2, sp.m // 2
    if bool((lo == hi).all()):
        low, = _statistics(e, sp, _Columns.of(e), (lo,))
        high = low
    else:
        low, high = _statistics(e, sp, _Columns.of(e), (lo, hi), adjacent=True)
    out = torch.zeros(n, e.width, dtype=torch.float64)
    out[:, :-1] = ((low + high) / 2).view(n, u)
    out[:, :-1].masked_fill_(~(e.ids < e.num_classes), 0.0)
    s = sp.values.view(n, k)
    out[:, -1] = (s.gather(1, lo[:, None]) + s.gather(1, hi[:, None])).squeeze(1) / 2
    return out


def trimmed_mean(e: UnionEntries, trim: float) -> torch.Tensor:
    """``[N, U + 1]``: the coordinate-wise mean of the present clients' values after dropping
    the ``c = min(floor(trim m), (m - 1) // 2)`` lowest and highest of the m, unnormalised,
    as :func:`fdcli.rules.trimmed_mean` computes it, to rounding (the sums run in another
    order). With x and y the values of ranks c - 1 and m - c (the last dropped ones), the kept
    values are those strictly between x and y, and the copies of x and of y that rank within
    [c, m - c): the spreads between are a difference of the row's sorted spreads' prefix sums,
    corrected for the column's listers."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    sp = _Spreads.of(e)
    k, n = e.present.shape
    u = e.ids.shape[1]
    m = sp.m
    cut = torch.minimum((m.float() * trim).floor().long(), (m - 1) // 2)
    s = sp.values.view(n, k)
    prefix = torch.cat([torch.zeros(n, 1, dtype=torch.float64),
                        torch.where(torch.isfinite(s), s, 0.0).cumsum(-1)], -1)
    # the spreads outside the union: the sorted spreads of ranks [c, m - c)
    kept = m - 2 * cut
    outside = (prefix.gather(1, (m - cut)[:, None]) - prefix.gather(1, cut[:, None])).squeeze(1)
    # x and y per column (no cut: every value is kept, x = -inf and y = inf)
    trims = cut > 0
    x, y = _statistics(e, sp, _Columns.of(e), ((cut - 1).clamp(min=0),
                                                torch.where(trims, m - cut, m - 1)))
    rows_of = torch.arange(n).repeat_interleave(u)
    x = torch.where(_pick(trims, rows_of), x, -math.inf).view(n, u)
    y = torch.where(_pick(trims, rows_of), y, math.inf).view(n, u)
    upto_x = torch.searchsorted(s, x, right=True)       # sorted spreads <= x
    below_y = torch.searchsorted(s, y)                  # sorted spreads < y
    between = prefix.gather(1, below_y) - prefix.gather(1, upto_x)
    at_x, at_y = upto_x.double(), below_y.double()
    # the listers: their spreads out, their listed probabilities in
    a, b = e.at_entries(e.spread), e.prob
    x_e, y_e = x.view(-1)[e.flat_col], y.view(-1)[e.flat_col]
    inside = ((b > x_e) & (b < y_e)).double() * b - ((a > x_e) & (a < y_e)).double() * a
    between.view(-1).index_add_(0, e.flat_col, inside)
    at_x.view(-1).index_add_(0, e.flat_col, (b <= x_e).double() - (a <= x_e).double())
    at_y.view(-1).index_add_(0, e.flat_col, (b < y_e).double() - (a < y_e).double())
    c, last = cut[:, None].double(), (m - cut)[:, None].double()
    copies_x, copies_y = at_x - c, last - at_y           # kept values equal to x and to y
    total = between + torch.where(copies_x > 0, x * copies_x, 0.0) \
        + torch.where(copies_y > 0, y * copies_y, 0.0)
    total = torch.where(x == y, x * kept[:, None].double(), total)
    out = torch.zeros(n, e.width, dtype=torch.float64)
    out[:, :-1] = torch.where(e.ids < e.num_classes, total / kept[:, None].double(), 0.0)
    out[:, -1] = outside / kept.double()
    return out


def _client_argmax(e: UnionEntries) -> torch.Tensor:
    """``[K, N]``: each client's most likely column of its dense row over the union (the
    first of equal ones), as ``argmax`` over :func:`fdcli.rules.union_support`'s row."""
    k, n = e.present.shape
    u = e.ids.shape[1]
    top = torch.full((k * n,), -math.inf, dtype=torch.float64)
    top.scatter_reduce_(0, e.cell, e.prob, "amax")
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


def consensus_distance(e: UnionEntries, cons: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fdcli.rules.consensus_distance` over the entries: ``(tv, agree)``, ``[K, N]``,
    against the normalised coordinate-wise median (``cons``, when the caller has it)."""
    if cons is None:
        cons = rules._normalise(median(e), e.mult)
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
    k, n = e.present.shape
    rules.check_present(e.present)
    if rule == "median":
        return rules._normalise(median(e), e.mult)
    if rule == "trimmed-mean":
        return rules._normalise(trimmed_mean(e, params.get("trim", 0.2)), e.mult)
    if rule in ("mean", "entropy-reduction"):
        weights = torch.ones(k, n, dtype=torch.float64)
    elif rule == "weighted":
        weights = rules.sample_counts(params["counts"], k, torch.float64)[:, None].expand(k, n)
    elif rule == "confidence":
        weights = rules.softmax_weights(confidence_scores(e, params.get("measure", "max")),
                                        e.present, params.get("tau", 1.0))
    else:
        raise ValueError(f"rule {rule!r} has no sparse form; use one of {SPARSE_RULES}")
    out = rules._normalise(weighted_average(e, weights), e.mult)
    if rule == "entropy-reduction":
        return rules.sharpen(out, params.get("temperature", 0.1), e.mult)
    return out
