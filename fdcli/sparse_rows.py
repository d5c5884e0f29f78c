"""Sparse rows of probabilities: the one type the bundle format, the aggregation rules and the
losses share. Pure torch; it knows nothing of files or codecs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SparseRows:
    """Sparse distributions over ``num_classes`` ids, one per row.

    ``ids``/``logp`` are ``[R, K]``; entries whose ``logp`` is ``-inf`` carry no mass and their
    id is meaningless (padding). ``tail_logp`` ``[R]`` is the log-mass of every id not listed
    (``-inf`` when the listed ids carry all of it). Together they sum to one.
    """

    ids: torch.Tensor
    logp: torch.Tensor
    tail_logp: torch.Tensor
    num_classes: int

    def to_dense(self) -> torch.Tensor:
        """Log-probs ``[R, V]``: the kept ids, with the tail spread evenly over the others."""
        return fill_dense(self.ids, self.logp, self.tail_logp, self.num_classes)


def fill_dense(ids, logp, tail_logp, num_classes) -> torch.Tensor:
    """Dense log-probs ``[R, V]`` from sparse rows, the tail spread evenly over unlisted ids."""
    rows, k = ids.shape
    live = torch.isfinite(logp)
    kept_count = live.sum(-1)
    others = (num_classes - kept_count).clamp(min=1).to(torch.float32)
    fill = torch.where(kept_count < num_classes, tail_logp - others.log(),
                       torch.full_like(tail_logp, -math.inf))
    out = fill[:, None].expand(rows, num_classes).clone()
    r, c = live.nonzero(as_tuple=True)
    out[r, ids[r, c].long()] = logp[r, c]
    return out


def row_sum(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Sum over the last dimension one element after another, in index order (torch's
    ``cumsum`` on a CPU), so a row's sum does not depend on how many padding zeros its batch
    appends. torch's vectorised ``sum`` groups a row's elements by the row's length, so the
    last bits of a sparse row's sum would change with the widest row it is combined with,
    and aggregated rows with the batch size, the number of processes and the clients.
    ``inplace``: the running sums overwrite ``x`` (no copy of it)."""
    if x.shape[-1] == 0:
        return x.sum(-1)
    return (x.cumsum_(-1) if inplace else x.cumsum(-1)).select(-1, -1)


def row_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x, -1)`` with :func:`row_sum`'s independence of trailing ``-inf``
    padding (a row of ``-inf`` gives ``-inf``)."""
    m = x.max(-1).values
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return shift + row_sum((x - shift[..., None]).exp()).log()
