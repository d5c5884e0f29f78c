"""The lowrank encoding: a whole shard's log-probs as ``u @ v + bias`` (see
:mod:`fdcli.bundle.codecs`, which registers it). No I/O and no training code."""

from __future__ import annotations

import math

import torch

from ..sparse import SparseRows, kl_rows
from .base import Codec, nonfinite
from .dense import DenseCodec


class LowRankCodec(Codec):
    """Log-probs of a whole shard approximated as ``u @ v + bias`` in fp16 and renormalised on
    read. ``u`` is ``[R, r]``, ``v`` is ``[r, V]``, ``bias`` is ``[V]``, with ``r <= rank``."""

    name = "lowrank"
    row_wise = False
    shared_tensors = ("v", "bias")
    FLOOR = -80.0

    def __init__(self, rank: int = 8):
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"lowrank: rank must be a positive integer, got {rank!r}")
        self.rank = rank

    def params(self):
        return {"rank": self.rank}

    def encode(self, logp, lse, num_classes, generator=None):
        logp = logp.clamp(min=self.FLOOR)
        bias = logp.mean(0)
        u_full, s, vh = torch.linalg.svd(logp - bias, full_matrices=False)
        r = max(1, min(self.rank, s.numel()))
        return {"u": (u_full[:, :r] * s[:r]).half(), "v": vh[:r].half(), "bias": bias.half()}

    def widths(self, header):
        shape = header.get("u", {}).get("shape", [0, 0])
        return {"rank": int(shape[1]) if len(shape) == 2 else -1}

    def check_widths(self, widths):
        if not 1 <= widths["rank"] <= self.rank:
            return [f"tensor 'u': rank {widths['rank']} is impossible; expected between 1 and "
                    f"rank={self.rank}"]
        return []

    def expected(self, rows, num_classes, widths):
        r = widths["rank"]
        return {"u": (torch.float16, (rows, r)), "v": (torch.float16, (r, num_classes)),
                "bias": (torch.float16, (num_classes,))}

    def dense(self, tensors, num_classes):
        approx = tensors["u"].float() @ tensors["v"].float() + tensors["bias"].float()
        return torch.log_softmax(approx, dim=-1)

    dense_at = DenseCodec.dense_at

    def sparse(self, tensors, num_classes):
        logp = self.dense(tensors, num_classes)
        ids = torch.arange(num_classes).expand_as(logp)
        return SparseRows(ids, logp, torch.full((logp.shape[0],), -math.inf), num_classes)

    def check_values(self, tensors, num_classes):
        problems = []
        for name in ("u", "v", "bias"):
            problems += nonfinite(name, tensors[name].float())
        return problems

    def fidelity(self, logp, tensors, num_classes):
        return {"tail_mass": torch.zeros(logp.shape[0]),
                "kl": kl_rows(logp, self.dense(tensors, num_classes))}
