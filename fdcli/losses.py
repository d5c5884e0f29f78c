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


class _SparseKD(torch.autograd.Function):
    """The tail-bucket KL and its gradient in one pass over the student's logits.

    With q = softmax(z / T), K the kept ids, p their teacher probabilities, p_tail the teacher's
    tail and Q_tail = 1 - sum_K q, the gradient of T^2 * KL with respect to z is
    ``T * (q - target)`` where target is p on K and ``q * p_tail / Q_tail`` elsewhere (the
    student's own tail shape, scaled to the teacher's tail mass), for teacher rows that sum to
    one (``T * (q * mass - target)`` in general). Computing it directly saves
    the autograd graph's extra passes over ``[rows, V]``, so a step costs about what
    cross-entropy does."""

    @staticmethod
    def forward(ctx, logits, ids, teacher_logp, teacher_tail, temperature):
        z = logits.float()
        logq = torch.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1)
        live = torch.isfinite(teacher_logp)
        ids = torch.where(live, ids.long(), torch.zeros_like(ids, dtype=torch.long))
        logq_kept = torch.where(live, logq.gather(1, ids), torch.full_like(teacher_logp, -math.inf))
        # the student's log-mass outside the kept ids, without cancellation
        log_q_tail = torch.log1p(-logq_kept.exp().sum(-1).clamp(max=1 - 1e-7))
        p_kept, p_tail = teacher_logp.exp(), teacher_tail.exp()
        kept = torch.where(live, p_kept * (teacher_logp - logq_kept), torch.zeros_like(p_kept))
        tail = torch.where(p_tail > 0, p_tail * (teacher_tail - log_q_tail),
                           torch.zeros_like(p_tail))
        rows = max(logits.shape[0], 1)
        ctx.save_for_backward(logq, ids, live, p_kept, p_tail, log_q_tail)
        ctx.temperature, ctx.rows, ctx.dtype = temperature, rows, logits.dtype
        return (kept.sum(-1) + tail).sum() * temperature ** 2 / rows

    @staticmethod
    def backward(ctx, grad_out):
        logq, ids, live, p_kept, p_tail, log_q_tail = ctx.saved_tensors
        t = ctx.temperature
        scale = grad_out * t / ctx.rows
        ratio = torch.where(p_tail > 0, (p_tail.clamp_min(1e-30).log() - log_q_tail).exp(),
                            torch.zeros_like(p_tail))
        # teacher rows sum to one when read from a bundle; the general form costs nothing
        mass = torch.where(live, p_kept, torch.zeros_like(p_kept)).sum(-1) + p_tail
        q_kept = logq.gather(1, ids).exp()
        # in place over the saved log-probs: no new [rows, V] tensor (single backward only)
        grad = logq.exp_().mul_(((mass - ratio) * scale)[:, None])
        fix = torch.where(live, (q_kept * ratio[:, None] - p_kept) * scale, torch.zeros_like(q_kept))
        grad.scatter_add_(1, ids, fix)
        return grad.to(ctx.dtype), None, None, None, None


def sparse_kd_loss(student_logits: torch.Tensor, ids: torch.Tensor, teacher_logp_t: torch.Tensor,
                   teacher_tail_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tail-bucket KD over k+1 outcomes: the teacher's kept ids and its tail, against the
    student's probabilities at the same ids and the student's mass on every other id summed
    into one bucket. No renormalisation over the kept ids, so the student is not pushed to be
    more confident than the teacher. Padding entries (``-inf``) are ignored. With a tail of
    zero mass (``-inf``) this is the sampled-target loss of a ``sample`` teacher, whose
    gradient is an unbiased estimate of the dense KL's."""
    return _SparseKD.apply(student_logits, ids, teacher_logp_t, teacher_tail_t,
                           float(temperature))
