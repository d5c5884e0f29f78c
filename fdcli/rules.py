"""Aggregation rules: how K clients' distributions over the same examples become one teacher.

Every rule is a pure function over tensors, with no I/O:

    rule(probs, present, **params) -> [N, C] probabilities

``probs`` is ``[K, N, C]`` (client k's probabilities for example n), ``present`` is a boolean
``[K, N]`` saying which clients have which example: each example is combined from the clients
that have it. Every rule averages **probabilities**, not logits, and returns rows that sum to
one. An example no client has is an error for the caller, not for the rules.

Sparse per-token distributions use the same rules through :func:`union_support`: each row's
columns are the union of the clients' listed ids plus one column for every other id, and
``mult`` ``[N, C]`` says how many ids each column stands for (1 for a listed id, V - |union|
for the last). A rule then treats column j as ``mult[:, j]`` ids of equal probability, so its
result equals the rule applied to the dense distributions (see ``tests/test_rules.py``).

:func:`coverage` weights each client's vote per class by how much of that class it trained
on (the clients' declared label counts), with a label-prior correction (Gong et al. 2022).

``RULES`` maps the names used on the command line to the functions.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .sparse_rows import SparseRows, row_sum

CONFIDENCE_MEASURES = ("max", "neg_entropy")


def _check(probs: torch.Tensor, present: torch.Tensor) -> None:
    if probs.dim() != 3 or present.shape != probs.shape[:2]:
        raise ValueError(f"probs must be [K, N, C] and present [K, N], got {list(probs.shape)} "
                         f"and {list(present.shape)}")
    check_present(present)


def check_present(present: torch.Tensor) -> None:
    """Refuse ``present`` ``[K, N]`` when an example has no client."""
    if not bool(present.any(0).all()):
        raise ValueError("every example needs at least one client that has it")


def sample_counts(counts: torch.Tensor | list[float], clients: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """The ``weighted`` rule's counts as ``[K]``, checked: one non-negative number per client."""
    counts = torch.as_tensor(counts, dtype=dtype)
    if counts.shape != (clients,) or bool((counts < 0).any()):
        raise ValueError(f"counts must be {clients} non-negative numbers, got {counts}")
    return counts


def _normalise(p: torch.Tensor, mult: torch.Tensor | None = None) -> torch.Tensor:
    # sparse rows (``mult``) are padded to their batch's widest union: their sums over the
    # columns run in index order (:func:`~fdcli.sparse_rows.row_sum`) so that a row's result
    # does not depend on the rows it is combined with
    total = p.sum(-1, keepdim=True) if mult is None else row_sum(p * mult)[..., None]
    return p / total.clamp_min(1e-30)


def weighted_average(probs: torch.Tensor, present: torch.Tensor,
                     weights: torch.Tensor, mult: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k w_k(x) p_k(x) / sum_k w_k(x) over present clients; ``weights`` is [K, N]."""
    _check(probs, present)
    w = torch.where(present, weights, torch.zeros_like(weights)).to(probs.dtype)
    w = w / w.sum(0, keepdim=True).clamp_min(1e-30)
    return _normalise((w[:, :, None] * probs).sum(0), mult)


def mean(probs: torch.Tensor, present: torch.Tensor,
         mult: torch.Tensor | None = None) -> torch.Tensor:
    """Plain average of the present clients' probabilities (FedMD, FedDF)."""
    return weighted_average(probs, present, torch.ones(present.shape), mult)


def confidence_scores(probs: torch.Tensor, measure: str = "max",
                      mult: torch.Tensor | None = None) -> torch.Tensor:
    """conf(S_k(x)) as [K, N]: the max probability, or the negative entropy (in nats)."""
    if measure == "max":
        if mult is not None:
            probs = probs.masked_fill(mult == 0, 0.0)
        return probs.max(-1).values
    if measure == "neg_entropy":
        plogp = probs * probs.clamp_min(1e-30).log()
        return plogp.sum(-1) if mult is None else row_sum(plogp * mult)
    raise ValueError(f"confidence measure must be one of {CONFIDENCE_MEASURES}, got {measure!r}")


def confidence_weights(probs: torch.Tensor, present: torch.Tensor, measure: str = "max",
                       tau: float = 1.0, mult: torch.Tensor | None = None) -> torch.Tensor:
    """alpha_k(x) = softmax over present clients of conf(S_k(x)) / tau, as [K, N]."""
    return softmax_weights(confidence_scores(probs, measure, mult), present, tau)


def softmax_weights(scores: torch.Tensor, present: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax over present clients of ``scores / tau`` ([K, N])."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    scores = (scores / tau).masked_fill(~present, -math.inf)
    return torch.softmax(scores, dim=0).nan_to_num(0.0)


def confidence(probs: torch.Tensor, present: torch.Tensor, measure: str = "max",
               tau: float = 1.0, mult: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's rule: S(x) = sum_k alpha_k(x) S_k(x), alpha = softmax_k(conf / tau)."""
    _check(probs, present)
    return weighted_average(probs, present,
                            confidence_weights(probs, present, measure, tau, mult), mult)


def sharpen(combined: torch.Tensor, temperature: float,
            mult: torch.Tensor | None = None) -> torch.Tensor:
    """DS-FL's entropy reduction of an aggregated distribution: softmax(p / temperature)
    over ``[N, C]`` probabilities (a temperature below 1 sharpens; the argmax is kept)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scores = combined / temperature
    if mult is None:
        return torch.softmax(scores, dim=-1)
    # column j holds mult_j ids of equal score: softmax over ids, read back per id (summed in
    # index order, as _normalise does)
    scores = scores + mult.clamp_min(1e-300).log()
    top = scores.max(-1, keepdim=True).values
    e = (scores - top).exp()
    total = e / row_sum(e)[..., None]
    return torch.where(mult > 0, total / mult.clamp_min(1), torch.zeros_like(total))


def entropy_reduction(probs: torch.Tensor, present: torch.Tensor, temperature: float = 0.1,
                      mult: torch.Tensor | None = None) -> torch.Tensor:
    """DS-FL's entropy reduction aggregation: softmax(mean probability / temperature)."""
    return sharpen(mean(probs, present, mult), temperature, mult)


def by_sample_count(probs: torch.Tensor, present: torch.Tensor,
                    counts: torch.Tensor | list[float],
                    mult: torch.Tensor | None = None) -> torch.Tensor:
    """Average weighted by each client's declared number of training examples ([K])."""
    counts = sample_counts(counts, probs.shape[0], probs.dtype)
    return weighted_average(probs, present, counts[:, None].expand(present.shape), mult)


def coverage(probs: torch.Tensor, present: torch.Tensor, counts: torch.Tensor | list,
             prior_correction: bool = True, smoothing: float = 1.0,
             mult: torch.Tensor | None = None) -> torch.Tensor:
    """Who saw what: client k's vote on class c is weighted by its share of the present
    clients' training examples of c, ``counts[k, c] / sum_k' counts[k', c]`` (``counts`` is
    ``[K, C]``, the label histograms the clients declared). A class no present client saw is
    averaged evenly. With ``prior_correction`` each client's probabilities are first divided by
    its own label prior, ``(counts + smoothing) / sum``, and renormalised: a client that saw
    mostly class c calls everything c, and this undoes that skew (label-shift correction).

    S(x)_c = sum_k w_kc q_k(x)_c / sum_c' (...), with q_k = p_k / prior_k renormalised (or p_k).
    Classification only: ``mult`` (sparse token rows) is refused."""
    _check(probs, present)
    if mult is not None:
        raise ValueError("the coverage rule needs per-class label counts; it applies to "
                         "classification bundles, not token bundles")
    counts = torch.as_tensor(counts, dtype=probs.dtype)
    k, _, c = probs.shape
    if counts.shape != (k, c) or bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(f"counts must be [{k}, {c}] non-negative label counts, got "
                         f"{list(counts.shape)}")
    if not smoothing > 0:
        raise ValueError(f"smoothing must be positive, got {smoothing}")
    q = probs
    if prior_correction:
        prior = (counts + smoothing) / (counts + smoothing).sum(-1, keepdim=True)
        q = _normalise(probs / prior[:, None, :])
    held = present.to(probs.dtype)[:, :, None] * counts[:, None, :]          # [K, N, C]
    total = held.sum(0, keepdim=True)
    even = present.to(probs.dtype)[:, :, None] / present.sum(0).to(probs.dtype)[None, :, None]
    w = torch.where(total > 0, held / total.clamp_min(1e-30), even.expand_as(held))
    return _normalise((w * q).sum(0))


#: the most entries (clients x rows x columns) :func:`median` sorts at once: 64 MiB of
#: float64, above glibc's largest mmap threshold (32 MiB), so each slice's arrays go back to
#: the system when freed (slices of 32 MiB left 200 Zipf clients at 1,983 MiB peak, against
#: 883 MiB with these)
MEDIAN_ELEMENTS = 1 << 23


def _sorted_last(probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[N, C, K]``: each coordinate's client values sorted, absent ones (``inf``) last.
    Sorted along the last, contiguous dimension: 3.7x faster than along the first at 200
    clients (the values are the same)."""
    big = torch.where(present[:, :, None], probs, torch.full_like(probs, math.inf))
    big = big.permute(1, 2, 0).contiguous()
    return big.sort(dim=-1).values


def _sorted_present(probs: torch.Tensor, present: torch.Tensor):
    """Clients sorted per coordinate with absent ones pushed to the end, and their count."""
    return _sorted_last(probs, present).permute(2, 0, 1), present.sum(0)


def median(probs: torch.Tensor, present: torch.Tensor,
           mult: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise median over present clients (the mean of the two middle values when
    their number is even), renormalised."""
    _check(probs, present)
    k, rows, cols = probs.shape
    n = present.sum(0)
    lo, hi = ((n - 1) // 2)[:, None, None], (n // 2)[:, None, None]
    out = torch.empty(rows, cols, dtype=probs.dtype)
    # a slice of the columns at a time: the sort holds three copies of what it sorts, and
    # one row of 1,000 clients over a 16,000-id union is 128 MiB a copy
    step = max(1, MEDIAN_ELEMENTS // max(k * rows, 1))
    for a in range(0, cols, step):
        ordered = _sorted_last(probs[:, :, a:a + step], present)
        width = ordered.shape[1]
        out[:, a:a + step] = (ordered.gather(2, lo.expand(rows, width, 1))
                              + ordered.gather(2, hi.expand(rows, width, 1))).squeeze(2) / 2
    return _normalise(out, mult)


def trimmed_mean(probs: torch.Tensor, present: torch.Tensor, trim: float = 0.2,
                 mult: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise mean after dropping floor(trim * n) lowest and highest present values,
    renormalised (never dropping every value)."""
    _check(probs, present)
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    ordered, n = _sorted_present(probs, present)
    cut = torch.minimum((n.float() * trim).floor().long(), (n - 1) // 2)
    rank = torch.arange(probs.shape[0])[:, None]
    keep = (rank >= cut[None, :]) & (rank < (n - cut)[None, :])
    kept = torch.where(keep[:, :, None], ordered, torch.zeros_like(ordered))
    return _normalise(kept.sum(0) / keep.sum(0)[:, None], mult)


def consensus_distance(probs: torch.Tensor, present: torch.Tensor,
                       mult: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each client is from the others, per example: ``(tv, agree)``, both ``[K, N]``.

    ``tv`` is the total-variation distance between client k's distribution and the
    coordinate-wise :func:`median` of the present clients (a consensus that a minority cannot
    move far), ``agree`` whether their most likely class is the same. Absent entries hold
    NaN and False."""
    cons = median(probs, present, mult)
    # in place: at 1,000 clients one row's [K, 1, union] is 128 MiB a copy
    diff = (probs - cons[None]).abs_()
    tv = 0.5 * (diff.sum(-1) if mult is None else row_sum(diff.mul_(mult[None]), inplace=True))
    agree = (probs.argmax(-1) == cons.argmax(-1)[None]) & present
    return torch.where(present, tv, torch.full_like(tv, math.nan)), agree


def _union(clients: list[SparseRows]):
    """Each client's listed ids (``V`` where unlisted), the union per row (ascending, padded
    with ``V``), its size per row, and ``[N, K * W]`` (W: the widest client's ids, a client's
    ids padded to it) each listed id's column in the union (``K * W`` where unlisted)."""
    v = clients[0].num_classes
    listed = [torch.where(torch.isfinite(c.logp), c.ids.long(), v) for c in clients]
    most = max(own.shape[1] for own in listed)
    flat = torch.cat([torch.nn.functional.pad(own, (0, most - own.shape[1]), value=v)
                      for own in listed], -1)
    allids, order = flat.sort(-1)
    del flat  # these [rows, clients x ids] arrays are the largest of a batch: one fewer
    keep = allids < v
    keep[:, 1:] &= allids[:, 1:] != allids[:, :-1]
    # each row's distinct ids moved to its front (the rest: V), without a second sort
    n, width = allids.shape
    column = keep.cumsum(-1, dtype=torch.int32) - 1  # a repeated id: its first copy's column
    out = torch.full((n, width + 1), v, dtype=allids.dtype).scatter_(
        1, torch.where(keep, column, width).long(), allids)
    where = torch.empty_like(column).scatter_(1, order, torch.where(allids < v, column, width))
    return listed, out[:, :width], keep.sum(-1), where


def union_support(clients: list[SparseRows], present: torch.Tensor, union=None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put K clients' sparse rows over one support per row.

    Returns ``ids`` ``[N, U]`` (the union of the clients' listed ids, ascending, padded with
    ``V``), ``probs`` ``[K, N, U + 1]`` (float64) and ``mult`` ``[N, U + 1]``. A client's
    probability for an id it did not list is its tail mass spread evenly over all the ids it
    did not list (the tail rule of :mod:`fdcli.bundle.sparse`); the last column stands for
    every id outside the union. Rows where a client is absent (``present`` ``[K, N]``) get
    zeros. ``union``: :func:`_union` of ``clients``, when the caller has it already."""
    v = clients[0].num_classes
    n = present.shape[1]
    listed, allids, count, where = union if union is not None else _union(clients)
    width = max(int(count.max()) if n else 0, 1)
    ids = allids[:, :width].contiguous()
    # every entry starts as its client's spread tail; the union's padding columns are 0;
    # then each client's listed ids are written where they sit in the union (one pass over
    # [K, N, U + 1], and [N, k] per client, where a search per union column cost K passes)
    spread = torch.stack([c.tail_logp.double().exp()
                          / (v - (own < v).sum(-1)).clamp(min=1).double()
                          for c, own in zip(clients, listed)])
    probs = spread[:, :, None].expand(len(clients), n, width + 1).clone()
    probs[:, :, :width].masked_fill_(~(ids < v)[None], 0.0)
    most = where.shape[1] // len(clients)
    for k, (c, own) in enumerate(zip(clients, listed)):
        mine = own < v
        pos = torch.where(mine, where[:, k * most:k * most + own.shape[1]].long(), width)
        probs[k].scatter_(1, pos, torch.where(mine, c.logp.double().exp(),
                                              spread[k][:, None].expand_as(own)))
    probs.masked_fill_(~present[:, :, None], 0.0)
    mult = torch.cat([(ids < v).double(), (v - count).double()[:, None]], -1)
    return ids, probs, mult


#: the working arrays of :mod:`fdcli.union_rules`, per listed entry and union column: the
#: entries' own (client, row, column, probability and two indices) and the median's
ENTRY_ARRAYS = 8

#: the most elements (clients x rows x union width) that :func:`aggregate_sparse` combines at
#: once; more rows are combined a chunk at a time (each float64 copy of them: 128 MiB)
UNION_ELEMENTS = 1 << 24


def aggregate_sparse(clients: list[SparseRows], present: torch.Tensor, rule: str,
                     distances: list | None = None,
                     max_elements: int | None = None, **params) -> SparseRows:
    """Combine K clients' sparse rows with ``rule`` over their union support (as
    :func:`union_support` puts them; computed on the listed entries, :mod:`fdcli.union_rules`);
    the result lists the union and carries the mass of every other id in its tail.
    Re-sparsify it by encoding it (``TopKCodec.encode_sparse``). When a ``distances`` list is
    given, :func:`consensus_distance` of the rows is appended to it.

    Rows are independent: when their working arrays pass ``max_elements`` (default
    :data:`UNION_ELEMENTS`; 0: no limit) they are combined in chunks of rows, so memory is
    bounded by ``max_elements`` and not by the number of clients squared. The working arrays
    are eight of (listed entries + union width + 1) per row. The rows are the same, bit for
    bit."""
    n = present.shape[1]
    max_elements = UNION_ELEMENTS if max_elements is None else max_elements
    union = _union(clients)
    if max_elements and n > 1:
        width = int(union[2].max()) + 1
        listed = sum((own < clients[0].num_classes).sum(-1) for own in union[0])
        step = max(1, max_elements // (ENTRY_ARRAYS * (int(listed.max()) + width)))
        if step < n:
            return _in_chunks(clients, present, rule, distances, step, union, **params)
    return _combine(clients, present, rule, distances, union, **params)


def _combine(clients: list[SparseRows], present: torch.Tensor, rule: str,
             distances: list | None, union, **params) -> SparseRows:
    """:func:`aggregate_sparse` of rows combined in one piece."""
    from . import union_rules

    entries = union_rules.union_entries(clients, present, union)
    ids, mult = entries.ids, entries.mult
    combined = union_rules.combine(entries, rule, **params)
    if distances is not None:
        # the median rule's rows are the distances' consensus: not computed twice
        distances.append(union_rules.consensus_distance(
            entries, combined if rule == "median" else None))
    v = clients[0].num_classes
    logp = torch.where(ids < v, combined[:, :-1].clamp_min(1e-300).log(),
                       torch.full_like(combined[:, :-1], -math.inf)).float()
    tail = (combined[:, -1] * mult[:, -1]).clamp_min(0)
    tail_logp = torch.where(tail > 0, tail.clamp_min(1e-300).log(),
                            torch.full_like(tail, -math.inf)).float()
    return SparseRows(torch.where(ids < v, ids, 0), logp, tail_logp, v)


def _in_chunks(clients: list[SparseRows], present: torch.Tensor, rule: str,
               distances: list | None, step: int, union, **params) -> SparseRows:
    """:func:`aggregate_sparse` a chunk of ``step`` rows at a time (``union`` sliced), joined
    (unlisted columns padded as the union pads them: id 0, log-probability -inf)."""
    listed, allids, count, where = union
    parts, tvs, agrees = [], [], []
    for a in range(0, present.shape[1], step):
        b = a + step
        chunk = [SparseRows(c.ids[a:b], c.logp[a:b], c.tail_logp[a:b], c.num_classes)
                 for c in clients]
        got: list = []
        parts.append(_combine(chunk, present[:, a:b], rule,
                              got if distances is not None else None,
                              ([own[a:b] for own in listed], allids[a:b], count[a:b],
                               where[a:b]),
                              **params))
        if got:
            tvs.append(got[0][0])
            agrees.append(got[0][1])
    width = max(p.ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    if distances is not None:
        distances.append((torch.cat(tvs, 1), torch.cat(agrees, 1)))
    return SparseRows(torch.cat([pad(p.ids, 0) for p in parts]),
                      torch.cat([pad(p.logp, -math.inf) for p in parts]),
                      torch.cat([p.tail_logp for p in parts]), clients[0].num_classes)


def gnmax(probs: torch.Tensor, present: torch.Tensor, *, sigma: float,
          threshold: float | None = None, threshold_sigma: float | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """PATE's noisy vote (Papernot et al. 2018): each client present votes for its most
    likely class; the answer is the class whose vote count plus N(0, ``sigma``^2) noise is
    largest (GNMax), as a one-hot row. With ``threshold`` (Confident-GNMax) an example is
    answered only when its largest vote count plus N(0, ``threshold_sigma``^2) noise reaches
    ``threshold``; the rows of the others are NaN (the caller leaves them out). The noise
    comes from ``generator``."""
    _check(probs, present)
    c = probs.shape[-1]
    votes = (torch.nn.functional.one_hot(probs.argmax(-1), c).to(torch.float64)
             * present[..., None]).sum(0)
    noise = torch.randn(votes.shape, generator=generator, dtype=torch.float64)
    answer = torch.nn.functional.one_hot((votes + sigma * noise).argmax(-1), c).to(probs.dtype)
    if threshold is not None:
        check = torch.randn(votes.shape[0], generator=generator, dtype=torch.float64)
        answered = votes.max(-1).values + threshold_sigma * check >= threshold
        answer[~answered] = math.nan
    return answer


RULES: dict[str, Callable[..., torch.Tensor]] = {
    "confidence": confidence,
    "mean": mean,
    "entropy-reduction": entropy_reduction,
    "weighted": by_sample_count,
    "coverage": coverage,
    "median": median,
    "trimmed-mean": trimmed_mean,
    "gnmax": gnmax,
}
