"""Sparse rows of log-probabilities and the small pure functions every codec shares:
normalising logits, KL, tempering, and filling a dense view. No I/O.

Tempering follows one rule for every encoding (docs/bundle-format.md, "Temperature"): kept
ids are exact at any temperature; the tail is spread evenly over the ids that were not kept.
"""

from __future__ import annotations

import math
import torch

# re-exported for the codecs
from ..sparse_rows import SparseRows, fill_dense, row_logsumexp  # noqa: F401


def index_dtype(num_classes: int) -> torch.dtype:
    """The narrowest unsigned integer type that holds every id below ``num_classes``."""
    if num_classes <= 1 << 8:
        return torch.uint8
    if num_classes <= 1 << 16:
        return torch.uint16
    if num_classes <= 1 << 32:
        return torch.uint32
    raise ValueError(f"a label space of {num_classes} ids does not fit in 32 bits")


def log_softmax_rows(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, log-sum-exp) of raw logits ``[R, V]``, in fp32: what every codec encodes."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    top = logits.argmax(dim=-1, keepdim=True)  # finite whenever any logit is
    lse = (logits.gather(1, top) - logp.gather(1, top)).squeeze(1)
    return logp, lse


def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row for log-prob tensors of one shape; 0 * log 0 counts as 0."""
    p = p_log.exp()
    diff = torch.where(p > 0, p_log - q_log, torch.zeros_like(p_log))
    return (p * diff).sum(-1)


def plogp_rows(logp: torch.Tensor) -> torch.Tensor:
    """Sum of p log p per row, 0 log 0 counting as 0 (no host synchronisation)."""
    p = logp.exp()
    return torch.where(p > 0, p * logp, torch.zeros((), device=logp.device)).sum(-1)


def concat_rows(blocks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate row tensors; 2-D tensors of different widths are zero-padded (padding)."""
    out = {}
    for name in blocks[0]:
        parts = [b[name] for b in blocks]
        if parts[0].dim() == 2:
            width = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) if p.shape[1] < width
                     else p for p in parts]
        out[name] = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out


def temper_sparse(rows: SparseRows, temperature: float) -> SparseRows:
    """``rows`` at temperature T: kept ids exactly (p_i^(1/T)), the tail spread evenly over the
    unkept ids and tempered as those ids, then everything renormalised."""
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    live = torch.isfinite(rows.logp)
    others = (rows.num_classes - live.sum(-1)).clamp(min=1).to(torch.float32)
    kept = rows.logp / temperature
    bucket = others.log() + (rows.tail_logp - others.log()) / temperature
    bucket = torch.where(torch.isfinite(rows.tail_logp), bucket, rows.tail_logp)
    z = torch.logsumexp(torch.cat([kept, bucket[:, None]], dim=-1), dim=-1)
    return SparseRows(rows.ids, kept - z[:, None], bucket - z, rows.num_classes)
