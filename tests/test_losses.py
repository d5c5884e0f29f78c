"""Distillation losses against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from fdcli.bundle import TopKCodec
from fdcli.losses import dense_kd_loss, sparse_kd_loss


def test_dense_kd_is_kl_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    T = 2.0
    p = torch.log_softmax(t / T, -1)
    q = torch.log_softmax(s / T, -1)
    want = (p.exp() * (p - q)).sum(-1).mean() * 4
    assert torch.allclose(dense_kd_loss(s, p, T), want)
    assert float(dense_kd_loss(t, p, T)) < 1e-6


def test_sparse_kd_equals_dense_kd_when_every_id_is_kept():
    torch.manual_seed(1)
    s, t = torch.randn(5, 9), torch.randn(5, 9)
    T = 2.0
    p = torch.log_softmax(t / T, -1)
    ids = torch.arange(9).expand(5, 9)
    tail = torch.full((5,), -float("inf"))
    assert torch.allclose(sparse_kd_loss(s, ids, p, tail, T), dense_kd_loss(s, p, T), atol=1e-6)


def test_sparse_kd_tail_bucket_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    q = torch.softmax(student, -1)[0]
    ids = torch.tensor([[0, 3]])
    p_kept, p_tail = torch.tensor([0.5, 0.3]), torch.tensor(0.2)
    q_kept, q_tail = q[[0, 3]], q[1] + q[2]
    want = (p_kept * (p_kept / q_kept).log()).sum() + p_tail * (p_tail / q_tail).log()
    got = sparse_kd_loss(student, ids, p_kept.log()[None], p_tail.log()[None], 1.0)
    assert torch.allclose(got, want, atol=1e-6)


def test_sparse_kd_from_a_topk_bundle_row_has_a_finite_gradient():
    logits = torch.randn(3, 50) * 3
    codec = TopKCodec(k=5)
    sp = codec.sparse_at(codec.encode_logits(logits, 50), 50, 2.0)
    student = torch.randn(3, 50, requires_grad=True)
    loss = sparse_kd_loss(student, sp.ids, sp.logp, sp.tail_logp, 2.0)
    loss.backward()
    assert torch.isfinite(student.grad).all() and float(loss.detach()) > 0


def _autograd_tail_bucket(student_logits, ids, teacher_logp, teacher_tail, temperature):
    """The tail-bucket KL written plainly, for autograd to differentiate."""
    q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    live = torch.isfinite(teacher_logp)
    q_kept = torch.where(live, q.gather(1, ids.long()), torch.full_like(teacher_logp, -math.inf))
    q_tail = torch.log1p(-q_kept.exp().sum(-1).clamp(max=1 - 1e-7))
    kept = torch.where(live, teacher_logp.exp() * (teacher_logp - q_kept), 0.0)
    tail = torch.where(teacher_tail > -math.inf,
                       teacher_tail.exp() * (teacher_tail - q_tail), 0.0)
    return (kept.sum(-1) + tail).mean() * temperature ** 2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_fused_sparse_kd_gradient_matches_autograd(temperature):
    torch.manual_seed(0)
    z = torch.randn(9, 60) * 2
    t = torch.log_softmax(torch.randn(9, 60) * 3, -1)
    ids = t.topk(6).indices
    logp = t.gather(1, ids)
    tail = torch.logsumexp(t.scatter(1, ids, -math.inf), -1)
    logp[0, 3] = -math.inf      # a padding entry
    tail[1] = -math.inf         # a row with no tail (a sampled teacher)
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    got = sparse_kd_loss(a, ids, logp, tail, temperature)
    want = _autograd_tail_bucket(b, ids, logp, tail, temperature)
    got.backward()
    want.backward()
    assert math.isclose(float(got.detach()), float(want.detach()), rel_tol=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
