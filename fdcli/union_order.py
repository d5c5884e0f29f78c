"""Order statistics of union columns over listed entries, for :mod:`fdcli.union_rules`.

A union column's values are the present clients' spreads (each client's tail mass over the
ids it did not list) with the column's listers' spreads taken out and their listed
probabilities put in. Its order statistic of rank r (per row) is found without the dense
column: in closed form where one client lists it (:func:`_single_lister`); where a few do,
as the row's spread of that rank less the listers' when every lister lists more
(:class:`_BelowListed`), else by a search over a window of the row's sorted spreads as wide as
the column's listers (:func:`_order_statistic`, :func:`_next_statistic`); where many do
(with fewer than 16 clients: two or more), by selecting from all the column's values
(:func:`_wide_columns`). The values are the dense column's, bit for bit. Pure torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .union_rules import UnionEntries


@dataclass
class Spreads:
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
    def of(cls, e: UnionEntries) -> "Spreads":
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


def _single_lister(e: UnionEntries, rank: torch.Tensor, sp: Spreads,
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


def _order_statistic(e: UnionEntries, rank: torch.Tensor, sp: Spreads, cols: torch.Tensor,
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
    a, b = _pick(e.entry_spread, ent), _pick(e.prob, ent)
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


def _next_statistic(e: UnionEntries, value: torch.Tensor, rank: torch.Tensor, sp: Spreads,
                    cols: torch.Tensor, ent: torch.Tensor, ecol: torch.Tensor) -> torch.Tensor:
    """:func:`_order_statistic` where ``value`` holds the one before (the two middle values of
    an even number of clients): ``value`` again if more than ``rank`` values are at most it,
    else the smallest value above it (a listed probability, or the next sorted spread unless
    the column's listers took every copy of it; those few columns are searched for)."""
    u, c = e.ids.shape[1], len(cols)
    a, b = _pick(e.entry_spread, ent), _pick(e.prob, ent)
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


#: columns listed by more than this share of the clients (and by more than
#: :data:`DENSE_LISTERS`) get their order statistics from all their clients' values
#: (:func:`_wide_columns`); a search over so wide a window costs more. With few clients
#: (under 16) that is every column that two or more list: selecting from ten values is cheap,
#: and the listed probabilities of clients that share a base model are most of the column,
#: where the search is at its slowest (4x on ten SmolLM2 fine-tunes' bundles)
DENSE_SHARE = 8
DENSE_LISTERS = 1


def _wide_columns(e: UnionEntries, cols: torch.Tensor, ranks) -> list[torch.Tensor]:
    """The order statistics ``ranks`` (each per row) of the columns ``cols``, over each
    column's K values as the dense rule sorts them, found by selection (:func:`_select`)."""
    k, n = e.present.shape
    u = e.ids.shape[1]
    rows = cols.div(u, rounding_mode="floor")
    values = torch.where(e.present, e.spread, math.inf).T.contiguous().index_select(0, rows)
    ent, at = _entries_of(n * u, e.flat_col, cols)
    values.view(-1).index_copy_(0, at * k + _pick(e.client, ent), _pick(e.prob, ent))
    ranks = [_pick(r, rows) for r in ranks]
    m = _pick(e.spreads.m, rows)
    if min(_reach(ranks, m)) <= k // 2 + 1:     # one selection serves every rank
        return _select(values, ranks, m)
    return [_select(values, [r], m)[0] for r in ranks]


def _reach(ranks: list[torch.Tensor], m: torch.Tensor) -> tuple[int, int]:
    """How many of each column's smallest values, and how many of its largest, hold every
    one of ``ranks``."""
    return (max(int(r.max()) for r in ranks) + 1,
            max(int((m - 1 - r).max()) for r in ranks) + 1)


def _select(values: torch.Tensor, ranks: list[torch.Tensor], m: torch.Tensor
            ) -> list[torch.Tensor]:
    """The values of ``ranks`` (0-based, per row, below ``m``) of each row of ``values``
    (``[C, K]``, the ``K - m`` absent ones ``inf``), from the fewer of the row's smallest or
    largest values that hold every rank: the largest are the smallest of the values negated
    (the absent ones still last), which is exact. The same values as a sort's, ties included:
    both are the row's multiset in order."""
    if len(values) == 0:
        return [values[:, 0] for _ in ranks]
    low, high = _reach(ranks, m)
    if low <= high:
        return _smallest(values, ranks)
    flipped = torch.where(values == math.inf, math.inf, -values)
    return [-v for v in _smallest(flipped, [m - 1 - r for r in ranks])]


def _smallest(values: torch.Tensor, ranks: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`_select` from each row's smallest values: those that hold every rank
    (``topk``, unsorted), then the few between the ranks (``topk``, sorted)."""
    low = max(int(r.max()) for r in ranks) + 1
    part = values.topk(low, -1, largest=False, sorted=False).values
    near = part.topk(low - min(int(r.min()) for r in ranks), -1, sorted=True).values
    return [near.gather(1, (low - 1 - r)[:, None]).squeeze(1) for r in ranks]


@dataclass
class Columns:
    """Which way each union column's order statistics are found (flat ``row * U + column``):
    ``single`` entries (of the columns one client lists; ``single_at`` their columns), the
    ``searched`` columns (with their entries ``ent`` and each one's index ``ecol`` in
    ``searched``) and the ``wide`` ones (selected from all their values)."""

    single: torch.Tensor
    single_at: torch.Tensor
    searched: torch.Tensor
    ent: torch.Tensor
    ecol: torch.Tensor
    wide: torch.Tensor

    @classmethod
    def of(cls, e: UnionEntries) -> "Columns":
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

    def __init__(self, e: UnionEntries, sp: Spreads, cols: torch.Tensor, ent: torch.Tensor,
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


def statistics(e: UnionEntries, ranks: tuple, adjacent: bool = False) -> list[torch.Tensor]:
    """The order statistics ``ranks`` (0-based, each per row and in range) of every union
    column of ``e``, flat ``[N * U]`` (0 off the union). Searched columns take
    :class:`_BelowListed` where it holds, else the search. ``adjacent``: two ranks, the second
    the next one (:func:`_next_statistic` then searches for it from the first)."""
    sp, cols = e.spreads, e.columns
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
                if adjacent and i:
                    value[rest] = _next_statistic(e, _pick(out[0], at), rank, sp, at, ent,
                                                  sub_col)
                else:
                    value[rest] = _order_statistic(e, rank, sp, at, ent, sub_col)
            got[cols.searched] = value
    if len(cols.wide):
        for got, values in zip(out, _wide_columns(e, cols.wide, ranks)):
            got[cols.wide] = values
    return out
