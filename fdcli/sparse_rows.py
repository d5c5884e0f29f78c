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
