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
  listers' spreads taken out and their listed probabilities put in (:mod:`fdcli.union_order`:
  in closed form, from the sorted spreads, by a search or by a sort, as the column's listers
  allow); the values are the dense array's, bit for bit;
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
from functools import cached_property

import torch

from . import rules
from .sparse_rows import SparseRows
from .union_order import Columns, Spreads, statistics

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

    @cached_property
    def entry_spread(self) -> torch.Tensor:
        """``[E]``: each entry's client's spread (what the entry's probability replaces)."""
        return self.at_entries(self.spread)

    @cached_property
    def spreads(self) -> Spreads:
        """The rows' sorted spreads (:class:`fdcli.union_order.Spreads`), for the order
        statistics of the rule and of the outlier distances alike."""
        return Spreads.of(self)

    @cached_property
    def columns(self) -> Columns:
        """How each union column's order statistics are found
        (:class:`fdcli.union_order.Columns`)."""
        return Columns.of(self)


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
    step = e.at_entries(w) * (e.prob - e.entry_spread)
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


def median(e: UnionEntries) -> torch.Tensor:
    """``[N, U + 1]``: the coordinate-wise median of the present clients (the mean of the two
    middle values when their number is even), unnormalised, as :func:`fdcli.rules.median`
    computes it, bit for bit: two order statistics of each union column
    (:func:`fdcli.union_order.statistics`), or one where the number of clients is odd."""
    sp = e.spreads
    k, n = e.present.shape
    u = e.ids.shape[1]
    lo, hi = (sp.m - 1) // 2, sp.m // 2
    if bool((lo == hi).all()):
        low, = statistics(e, (lo,))
        high = low
    else:
        low, high = statistics(e, (lo, hi), adjacent=True)
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
    sp = e.spreads
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
    x, y = statistics(e, ((cut - 1).clamp(min=0), torch.where(trims, m - cut, m - 1)))
    x = torch.where(trims[:, None], x.view(n, u), -math.inf)
    y = torch.where(trims[:, None], y.view(n, u), math.inf)
    upto_x = torch.searchsorted(s, x, right=True)       # sorted spreads <= x
    below_y = torch.searchsorted(s, y)                  # sorted spreads < y
    between = prefix.gather(1, below_y) - prefix.gather(1, upto_x)
    at_x, at_y = upto_x.double(), below_y.double()
    # the listers: their spreads out, their listed probabilities in
    a, b = e.entry_spread, e.prob
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
    fix = (e.prob - c_e).abs() - (e.entry_spread - c_e).abs()
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
