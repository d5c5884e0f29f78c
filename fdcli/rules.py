"""Aggregation rules: how K clients' distributions over the same examples become one teacher.

Every rule is a pure function over tensors, with no I/O:

    rule(probs, present, **params) -> [N, C] probabilities

``probs`` is ``[K, N, C]`` (client k's probabilities for example n), ``present`` is a boolean
``[K, N]`` saying which clients have which example: each example is combined from the clients
that have it. Every rule averages **probabilities**, not logits, and returns rows that sum to
one. An example no client has is an error for the caller, not for the rules.

``RULES`` maps the names used on the command line to the functions.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

CONFIDENCE_MEASURES = ("max", "neg_entropy")


def _check(probs: torch.Tensor, present: torch.Tensor) -> None:
    if probs.dim() != 3 or present.shape != probs.shape[:2]:
        raise ValueError(f"probs must be [K, N, C] and present [K, N], got {list(probs.shape)} "
                         f"and {list(present.shape)}")
    if not bool(present.any(0).all()):
        raise ValueError("every example needs at least one client that has it")


def _normalise(p: torch.Tensor) -> torch.Tensor:
    return p / p.sum(-1, keepdim=True).clamp_min(1e-30)


def weighted_average(probs: torch.Tensor, present: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k(x) p_k(x) / sum_k w_k(x) over present clients; ``weights`` is [K, N]."""
    _check(probs, present)
    w = torch.where(present, weights, torch.zeros_like(weights)).to(probs.dtype)
    w = w / w.sum(0, keepdim=True).clamp_min(1e-30)
    return _normalise((w[:, :, None] * probs).sum(0))


def mean(probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Plain average of the present clients' probabilities (FedMD, FedDF)."""
    return weighted_average(probs, present, torch.ones(present.shape))


def confidence_scores(probs: torch.Tensor, measure: str = "max") -> torch.Tensor:
    """conf(S_k(x)) as [K, N]: the max probability, or the negative entropy (in nats)."""
    if measure == "max":
        return probs.max(-1).values
    if measure == "neg_entropy":
        return (probs * probs.clamp_min(1e-30).log()).sum(-1)
    raise ValueError(f"confidence measure must be one of {CONFIDENCE_MEASURES}, got {measure!r}")


def confidence_weights(probs: torch.Tensor, present: torch.Tensor, measure: str = "max",
                       tau: float = 1.0) -> torch.Tensor:
    """alpha_k(x) = softmax over present clients of conf(S_k(x)) / tau, as [K, N]."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    scores = confidence_scores(probs, measure) / tau
    scores = scores.masked_fill(~present, -math.inf)
    return torch.softmax(scores, dim=0).nan_to_num(0.0)


def confidence(probs: torch.Tensor, present: torch.Tensor, measure: str = "max",
               tau: float = 1.0) -> torch.Tensor:
    """The seed's rule: S(x) = sum_k alpha_k(x) S_k(x), alpha = softmax_k(conf / tau)."""
    _check(probs, present)
    return weighted_average(probs, present, confidence_weights(probs, present, measure, tau))


def entropy_reduction(probs: torch.Tensor, present: torch.Tensor,
                      temperature: float = 0.1) -> torch.Tensor:
    """DS-FL's entropy reduction aggregation: softmax(mean probability / temperature)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return torch.softmax(mean(probs, present) / temperature, dim=-1)


def by_sample_count(probs: torch.Tensor, present: torch.Tensor,
                    counts: torch.Tensor | list[float]) -> torch.Tensor:
    """Average weighted by each client's declared number of training examples ([K])."""
    counts = torch.as_tensor(counts, dtype=probs.dtype)
    if counts.shape != (probs.shape[0],) or bool((counts < 0).any()):
        raise ValueError(f"counts must be {probs.shape[0]} non-negative numbers, got {counts}")
    return weighted_average(probs, present, counts[:, None].expand(present.shape))


def _sorted_present(probs: torch.Tensor, present: torch.Tensor):
    """Clients sorted per coordinate with absent ones pushed to the end, and their count."""
    big = torch.where(present[:, :, None], probs, torch.full_like(probs, math.inf))
    return big.sort(dim=0).values, present.sum(0)


def median(probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over present clients (the mean of the two middle values when
    their number is even), renormalised."""
    _check(probs, present)
    ordered, n = _sorted_present(probs, present)
    lo = ((n - 1) // 2)[None, :, None].expand(1, *probs.shape[1:])
    hi = (n // 2)[None, :, None].expand(1, *probs.shape[1:])
    return _normalise((ordered.gather(0, lo) + ordered.gather(0, hi)).squeeze(0) / 2)


def trimmed_mean(probs: torch.Tensor, present: torch.Tensor, trim: float = 0.2) -> torch.Tensor:
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
    return _normalise(kept.sum(0) / keep.sum(0)[:, None])


RULES: dict[str, Callable[..., torch.Tensor]] = {
    "confidence": confidence,
    "mean": mean,
    "entropy-reduction": entropy_reduction,
    "weighted": by_sample_count,
    "median": median,
    "trimmed-mean": trimmed_mean,
}
