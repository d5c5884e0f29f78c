"""The top-k codec: the k most likely ids per row, their log-probabilities and the tail."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..kernels import topk_fused
from ..sparse import SparseRows, index_dtype, kl_rows, plogp_rows, row_logsumexp
from .base import (EXACT_TAIL_BELOW, FP16_FLOOR, Codec, bad_rows, ids_in_range, ids_out, nonfinite,
                   normalised)


class TopKCodec(Codec):
    """The k most likely ids, their T=1 log-probs over the full vocabulary, the tail log-mass
    and the raw-logit log-sum-exp.

    Entries are sorted by id, ascending: a row's kept set then reads the same bytes whenever it
    recurs, which zstd exploits (see benchmarks/codec.py). ``value_dtype`` is ``"fp16"``
    (tensor ``logp``) or ``"int8"``: 8-bit codes of the square root of the probability in
    tensor ``logp_codes`` (dtype U8), ``sqrt(p) = code * scale``, so ``logp = 2 log(code *
    scale)``; code 0 (``sqrt(p) < scale / 2``) reads as ``sqrt(p) = scale / 4``.

    Quantising sqrt(p) uniformly gives each kept id a log-step proportional to 1/sqrt(p),
    which is what minimises the KL for a given number of levels: each entry costs about
    ``scale**2 / 6`` nats, so the default scale, ``1 / round(63 * sqrt(k / 16))``, holds the
    rounding KL near 7e-4 nats for any k.
    """

    name = "topk"

    def __init__(self, k: int = 16, value_dtype: str = "int8", scale: float | None = None):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"topk: k must be a positive integer, got {k!r}")
        if value_dtype not in ("fp16", "int8"):
            raise ValueError(f"topk: value_dtype must be 'fp16' or 'int8', got {value_dtype!r}")
        if value_dtype == "fp16" and scale is not None:
            raise ValueError("topk: scale applies to value_dtype 'int8' only")
        if value_dtype == "int8" and scale is None:
            scale = 1.0 / min(255, round(63 * math.sqrt(k / 16)))
        if scale is not None and not (isinstance(scale, (int, float)) and 1 / 255 <= scale <= 1):
            raise ValueError(f"topk: scale must be a number in [1/255, 1], got {scale!r}")
        self.k, self.value_dtype, self.scale = k, value_dtype, scale

    def params(self):
        p: dict[str, Any] = {"k": self.k, "value_dtype": self.value_dtype}
        if self.scale is not None:
            p["scale"] = self.scale
        return p

    def width(self, num_classes: int) -> int:
        return min(self.k, num_classes)

    def encode(self, logp, lse, num_classes, generator=None):
        k = self.width(num_classes)
        vals, ids = logp.topk(k, dim=-1, sorted=False)
        ids, order = ids.sort(dim=-1)
        vals = vals.gather(1, order)
        if k < num_classes:
            # log-sum-exp over the ids not kept: exact even when the tail is tiny, where
            # 1 - sum(kept) would be mostly rounding error
            tail = torch.logsumexp(logp.scatter(1, ids, -math.inf), dim=-1)
        else:
            tail = torch.full_like(lse, -math.inf)
        return self._pack(ids, vals, tail, lse, num_classes)

    def encode_logits(self, logits, num_classes, generator=None):
        """The fast path from raw logits, on their device and in their dtype, with no ``[R, V]``
        log-prob tensor: :meth:`encode_fused` on a GPU. Elsewhere torch's log-sum-exp and
        top-k (the fewest passes on a CPU), the tail as ``log1p(-sum kept p)`` in fp64 where
        it holds at least ``EXACT_TAIL_BELOW`` of the mass (relative error under 1e-4 there)
        and the exact masked log-sum-exp on the other rows."""
        if logits.device.type == "cuda":
            return self.encode_fused(logits, num_classes)
        k = self.width(num_classes)
        ids, raw = self._top(logits, k)
        lse = torch.logsumexp(logits.float(), dim=-1)
        tail = torch.full_like(lse, -math.inf)
        if k < num_classes:
            kept = (raw - lse[:, None]).double().exp().sum(-1)
            tail = torch.log1p(-kept.clamp(max=1.0)).float()
            sharp = (1 - kept < EXACT_TAIL_BELOW).nonzero().view(-1)
            if len(sharp):
                rows = logits[sharp].float().scatter(1, ids[sharp], -math.inf)
                tail[sharp] = torch.logsumexp(rows, dim=-1) - lse[sharp]
        return self._pack(ids, raw - lse[:, None], tail, lse, num_classes)

    def encode_fused(self, logits, num_classes, generator=None):
        """:meth:`encode_logits` with no host synchronisation and one read of the logits (for
        a GPU; runs anywhere): :func:`~fdcli.bundle.kernels.topk_fused`, whose tail is exact
        however small."""
        ids, raw, tail, lse, m = topk_fused(logits, self.width(num_classes))
        return self._pack(ids, raw - lse[:, None], tail, lse, num_classes) | bad_rows(m)

    @staticmethod
    def _top(logits, k):
        """The k largest logits' ids, ascending, and those logits in fp32."""
        raw, ids = logits.topk(k, dim=-1, sorted=False)
        ids, order = ids.sort(dim=-1)
        return ids, raw.gather(1, order).float()

    def encode_sparse(self, rows: SparseRows, lse: torch.Tensor | None = None):
        """Tensors for rows that are already sparse (an aggregated teacher): the k most likely
        listed ids, the rest of the listed mass joining the tail. A row that lists fewer than
        k ids is first given unlisted ids, each with its even share of the tail (the tail
        rule of :mod:`~fdcli.bundle.sparse`, so the distribution does not change). ``lse``
        defaults to 0: the stored log-probs are then the logits."""
        k, v = self.width(rows.num_classes), rows.num_classes
        ids, logp, tail = rows.ids.long(), rows.logp.float(), rows.tail_logp.float()
        live = torch.isfinite(logp)
        listed = live.sum(-1)
        need = (k - listed).clamp(min=0)
        fill = torch.zeros_like(live)
        if bool((need > 0).any()):
            cand = torch.arange(2 * k)
            used = (cand[None, :, None] == torch.where(live, ids, -1)[:, None, :]).any(-1)
            pick = ~used & ((~used).cumsum(-1) <= need[:, None])
            others = (v - listed).clamp(min=1).float()
            share = (tail - others.log())[:, None].expand_as(pick)
            ids = torch.cat([ids, torch.where(pick, cand, 0)], -1)
            logp = torch.cat([logp, torch.where(pick, share, -math.inf)], -1)
            fill = torch.cat([fill, pick], -1)
            tail = tail + torch.log1p(-need / others)
        # padding entries rank below the unlisted ids given out above, even when those carry
        # no mass (a tail of zero, as in sampled rows): padding ids may repeat a kept id
        key = torch.where(torch.isfinite(logp) | ~fill, logp,
                          torch.full_like(logp, torch.finfo(logp.dtype).min))
        pos = _top_positions(key, k)
        vals = logp.gather(1, pos)
        dropped = logp.scatter(1, pos, -math.inf)
        # the row's own sum, whatever width its batch pads it to (row_logsumexp)
        tail = row_logsumexp(torch.cat([dropped, tail[:, None]], -1))
        ids, order = ids.gather(1, pos).sort(dim=-1)
        vals = vals.gather(1, order)
        lse = torch.zeros(len(ids)) if lse is None else lse
        return self._pack(ids, vals, tail, lse, v)

    def _pack(self, ids, vals, tail, lse, num_classes):
        out = {"ids": ids_out(ids, num_classes), "tail_logp": tail.float(),
               "lse": lse.float()}
        if self.value_dtype == "fp16":
            out["logp"] = vals.clamp(min=FP16_FLOOR).half()
        else:
            codes = torch.round((vals / 2).exp() / self.scale).clamp(0, 255)
            out["logp_codes"] = codes.to(torch.uint8)
        return out

    def expected(self, rows, num_classes, widths):
        k = self.width(num_classes)
        spec = {"ids": (index_dtype(num_classes), (rows, k)),
                "tail_logp": (torch.float32, (rows,)), "lse": (torch.float32, (rows,))}
        if self.value_dtype == "fp16":
            spec["logp"] = (torch.float16, (rows, k))
        else:
            spec["logp_codes"] = (torch.uint8, (rows, k))
        return spec

    def _values(self, tensors) -> torch.Tensor:
        if self.value_dtype == "fp16":
            return tensors["logp"].float()
        codes = tensors["logp_codes"].float()
        return 2 * (torch.where(codes > 0, codes, 0.25) * self.scale).log()

    def sparse(self, tensors, num_classes):
        vals = self._values(tensors)
        tail = tensors["tail_logp"]
        z = torch.logsumexp(torch.cat([vals, tail[:, None]], dim=-1), dim=-1)
        return SparseRows(tensors["ids"].to(torch.int64), vals - z[:, None], tail - z, num_classes)

    def check_values(self, tensors, num_classes):
        ids = tensors["ids"].to(torch.int64)
        problems = ids_in_range("ids", ids, num_classes)
        if bool((ids[:, 1:] <= ids[:, :-1]).any()):
            problems.append("tensor 'ids': ids within a row are not strictly increasing")
        problems += nonfinite("tail_logp", tensors["tail_logp"], allow_neg_inf=True)
        problems += nonfinite("lse", tensors["lse"])
        if self.value_dtype == "fp16":
            problems += nonfinite("logp", tensors["logp"])
            name, tol = "logp", 0.02
        else:
            name = "logp_codes"
            # each sqrt(p) is off by at most scale/2, so the mass by at most
            # scale * sum(sqrt p) + k scale^2 / 4 <= scale * sqrt(k) + k scale^2 / 4
            k = self.width(num_classes)
            tol = -math.log1p(-min(0.5, self.scale * math.sqrt(k) + k * self.scale ** 2 / 4)) \
                + 1e-3
        if problems:
            return problems
        vals = self._values(tensors)
        if vals.numel() and float(vals.max()) > tol:
            problems.append(f"tensor '{name}': a log-probability of {float(vals.max()):.4g} is "
                            "positive; expected values at most 0")
        total = torch.logsumexp(torch.cat([vals, tensors["tail_logp"][:, None]], -1), -1)
        return problems + normalised(name, total, tol)

    def fidelity(self, logp, tensors, num_classes):
        ids = tensors["ids"].to(torch.int64)
        exact_kept = logp.gather(1, ids)
        tail = tensors["tail_logp"]
        exact = torch.cat([exact_kept, tail[:, None]], -1)
        stored = self.sparse(tensors, num_classes)
        quant_kl = kl_rows(exact, torch.cat([stored.logp, stored.tail_logp[:, None]], -1))
        # KL(p || kept ids + tail spread evenly), without a second [rows, V] tensor:
        # sum over unkept ids of p log p, minus tail * log(tail / (V - k))
        plogp = plogp_rows(logp)
        kept_plogp = plogp_rows(exact_kept)
        others = max(num_classes - ids.shape[1], 1)
        fill = torch.where(torch.isfinite(tail), tail - math.log(others), torch.zeros_like(tail))
        trunc = (plogp - kept_plogp - tail.exp() * fill).clamp(min=0)
        return {"tail_mass": tail.exp(), "kl": quant_kl, "truncation_kl": trunc}


def _top_positions(key: torch.Tensor, k: int) -> torch.Tensor:
    """``[R, k]``: the positions of each row's k largest ``key`` values, in position order;
    ties (the median rule makes many) go to the lower position, as a stable descending sort's
    first k would (``topk``'s own choice among equal values changes with the row's padded
    width). The k-th largest value t is found by ``topk``; every value above t is kept, and
    the first of those equal to t fill the rest: no sort of the whole row."""
    t = key.topk(k, dim=-1).values[:, -1:]
    above = key > t
    tied = key == t
    keep = above | (tied & (tied.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
    return keep.nonzero()[:, 1].view(len(key), k)
