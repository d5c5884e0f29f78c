"""The dense codec: every log-probability, fp16."""

from __future__ import annotations

import math

import torch

from ..sparse import SparseRows, kl_rows
from .base import FP16_FLOOR, Codec, nonfinite, normalised


class DenseCodec(Codec):
    """Full log-probabilities in fp16: exact to fp16 rounding, for small label spaces."""

    name = "dense"

    def params(self):
        return {}

    def encode(self, logp, lse, num_classes, generator=None):
        return {"logp": logp.clamp(min=FP16_FLOOR).half()}

    def expected(self, rows, num_classes, widths):
        return {"logp": (torch.float16, (rows, num_classes))}

    def sparse(self, tensors, num_classes):
        logp = torch.log_softmax(tensors["logp"].float(), dim=-1)
        rows = logp.shape[0]
        ids = torch.arange(num_classes).expand(rows, num_classes)
        return SparseRows(ids, logp, torch.full((rows,), -math.inf), num_classes)

    def dense(self, tensors, num_classes):
        return torch.log_softmax(tensors["logp"].float(), dim=-1)

    def dense_at(self, tensors, num_classes, temperature):
        return torch.log_softmax(self.dense(tensors, num_classes) / temperature, dim=-1)

    def check_values(self, tensors, num_classes):
        logp = tensors["logp"].float()
        problems = nonfinite("logp", logp, allow_neg_inf=True)
        if not problems:
            problems += normalised("logp", torch.logsumexp(logp, -1), 0.02)
        return problems

    def fidelity(self, logp, tensors, num_classes):
        return {"tail_mass": torch.zeros(logp.shape[0]),
                "kl": kl_rows(logp, self.dense(tensors, num_classes))}
