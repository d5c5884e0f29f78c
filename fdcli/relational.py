"""The relational student: an encoder whose "logits" are its similarities to the anchors.

The student embeds each proxy example with live gradients and compares it with its own
embeddings of the anchors, held in a bank (no gradients). Two ways to keep the bank fresh:

- ``epoch`` (default): the student re-embeds every anchor at the start of each epoch.
- ``momentum``: a momentum encoder (an exponential moving average of the student's weights,
  MoCo-style) re-embeds ``refresh`` anchors after every optimiser step, in rotation, and all
  of them at each epoch's start.

benchmarks/relational_bank.py measures the two (docs/embeddings.md).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from .embedding import embed, normalized, pool, relation_logits
from .models import Classifier

BANKS = ("epoch", "momentum")


class RelationalStudent(torch.nn.Module):
    """Wraps ``enc.model`` so that ``forward(**inputs, anchor_pos=...)`` returns an output
    whose ``logits`` ``[B, N]`` are the cosine similarities to the N anchors at
    ``temperature`` (see :func:`fdcli.embedding.relation_logits`): the Trainer's KD losses
    then apply unchanged."""

    def __init__(self, enc: Classifier, anchor_values: Sequence[Any], *, pooling: str,
                 temperature: float, bank: str = "epoch", momentum: float = 0.99,
                 refresh: int = 64, batch_size: int = 64):
        super().__init__()
        if bank not in BANKS:
            raise ValueError(f"bank must be one of {list(BANKS)}, got {bank!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.encoder = enc.model
        self.config = enc.model.config
        self.fd_enc, self.fd_values = enc, list(anchor_values)
        self.pooling, self.temperature = pooling, temperature
        self.bank_kind, self.momentum = bank, momentum
        self.refresh_size, self.batch_size = max(1, refresh), batch_size
        self.ema = None
        if bank == "momentum":
            self.ema = copy.deepcopy(enc.model)
            self.ema.requires_grad_(False)
        self.anchors = torch.zeros(0)
        self.center = torch.zeros(0)
        self.pointer = 0
        self.refreshes = 0

    def _bank_encoder(self) -> Classifier:
        model = self.ema if self.ema is not None else self.encoder
        return Classifier(model, self.fd_enc.processor, self.fd_enc.kind, [])

    def refresh(self) -> None:
        """Re-embed every anchor (with the momentum encoder, if any) and re-centre."""
        z = embed(self._bank_encoder(), self.fd_values, self.pooling, self.batch_size)
        device = next(self.encoder.parameters()).device
        self.center = z.mean(0).to(device)
        self.anchors = normalized(z.to(device), self.center)
        self.refreshes += 1

    @torch.no_grad()
    def after_step(self) -> None:
        """Momentum bank: move the momentum encoder towards the student and re-embed the
        next ``refresh`` anchors with it."""
        if self.ema is None:
            return
        for e, p in zip(self.ema.parameters(), self.encoder.parameters()):
            e.mul_(self.momentum).add_(p.detach(), alpha=1 - self.momentum)
        for e, b in zip(self.ema.buffers(), self.encoder.buffers()):
            e.copy_(b)
        n = len(self.fd_values)
        idx = [(self.pointer + i) % n for i in range(min(self.refresh_size, n))]
        z = embed(self._bank_encoder(), [self.fd_values[i] for i in idx], self.pooling,
                  self.batch_size)
        self.anchors[torch.tensor(idx)] = normalized(z.to(self.anchors.device), self.center)
        self.pointer = (self.pointer + len(idx)) % n

    def forward(self, anchor_pos: torch.Tensor | None = None, **inputs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if not len(self.anchors):
            self.refresh()
        z = pool(self.encoder(**inputs), inputs, self.pooling, type(self.encoder).__name__)
        return SequenceClassifierOutput(logits=relation_logits(
            z, self.anchors, self.center, self.temperature, anchor_pos))


def bank_callback(student: RelationalStudent):
    """A Trainer callback that refreshes ``student``'s bank at each epoch's start and, for the
    momentum bank, after each step."""
    from transformers.trainer_callback import TrainerCallback

    class Bank(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            student.refresh()

        def on_step_end(self, args, state, control, **kwargs):
            student.after_step()

    return Bank()
