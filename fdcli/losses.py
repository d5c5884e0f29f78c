"""Distillation losses. Every soft loss is KL(teacher_T || student_T) * T^2 (Hinton et al.
2015), so gradients keep their scale as the temperature T changes."""

from __future__ import annotations

import math

import torch


def dense_kd_loss(student_logits: torch.Tensor, teacher_logp_t: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Mean over rows of KL(p_T || q_T) * T^2; ``teacher_logp_t`` is already at T."""
    q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    p = teacher_logp_t.exp()
    kl = (p * (teacher_logp_t - q)).nan_to_num(0.0).sum(-1)
    return kl.mean() * temperature ** 2


def sparse_kd_loss(student_logits: torch.Tensor, ids: torch.Tensor, teacher_logp_t: torch.Tensor,
                   teacher_tail_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tail-bucket KD over k+1 outcomes: the teacher's kept ids and its tail, against the
    student's probabilities at the same ids and the student's mass on every other id summed
    into one bucket. No renormalisation over the kept ids, so the student is not pushed to be
    more confident than the teacher. Padding entries (``-inf``) are ignored."""
    q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    live = torch.isfinite(teacher_logp_t)
    q_kept = q.gather(1, ids.long())
    q_kept_live = torch.where(live, q_kept, torch.full_like(q_kept, -math.inf))
    # student's log-mass outside the kept ids, computed without cancellation
    q_tail = torch.log1p(-q_kept_live.exp().sum(-1).clamp(max=1 - 1e-7))
    p_kept, p_tail = teacher_logp_t.exp(), teacher_tail_t.exp()
    kept_term = torch.where(live, p_kept * (teacher_logp_t - q_kept), torch.zeros_like(q_kept))
    tail_term = torch.where(p_tail > 0, p_tail * (teacher_tail_t - q_tail),
                            torch.zeros_like(p_tail))
    return (kept_term.sum(-1) + tail_term).mean() * temperature ** 2
