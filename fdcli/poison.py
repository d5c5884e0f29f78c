"""Poisoned clients, for measuring how the aggregation rules hold up (``fd simulate --poison``).

A poisoned client emits whatever it likes; these are the three behaviours measured:

- ``random``: confident predictions with no relation to the input (logits drawn from
  N(0, 3^2) for every class).
- ``flip``: a consistent label-flipping attack, every class's probability moved to the next
  class (c -> c + 1 mod C), as a client trained on relabelled data would emit.
- ``overconfident``: certainty (a logit margin of 30) on a wrong class, drawn at random
  for each example: the attack aimed at rules that weight clients by confidence.
- ``shuffled``: the client's own distributions, each sent for another row (of the same
  shard): plausible, peaked predictions that belong to other inputs, or for a token bundle to
  other positions of the text.

For token bundles (causal-lm, seq2seq) the kinds that make sense per token are ``random``,
``shuffled`` and ``overconfident`` (a wrong token); ``flip`` (id -> id + 1 over the
vocabulary) is refused there, having no meaning for tokens (:data:`TOKEN_POISON_KINDS`).

:func:`poison_logits` is pure; :func:`poison_bundle` rewrites a bundle in place, keeping its
client id, encoding and manifest fields, as a hostile client would.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .bundle import BundleWriter, read_bundle
from .errors import FdError

POISON_KINDS = ("random", "flip", "overconfident", "shuffled")
TOKEN_POISON_KINDS = ("random", "shuffled", "overconfident")
#: a token bundle is poisoned this many rows (whole examples) at a time
TOKEN_ROWS_AT_ONCE = 4096


def poison_logits(logp: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """What a poisoned client reports instead of the log-probabilities ``logp`` [N, C]."""
    n, c = logp.shape
    if kind == "random":
        return torch.randn(n, c, generator=generator) * 3.0
    if kind == "flip":
        return logp.roll(1, dims=-1)
    if kind == "overconfident":
        own = logp.argmax(-1)
        wrong = (own + torch.randint(1, c, (n,), generator=generator)) % c
        return torch.nn.functional.one_hot(wrong, c).float() * 30.0
    if kind == "shuffled":
        return logp[torch.randperm(n, generator=generator)]
    raise ValueError(f"poison kind must be one of {list(POISON_KINDS)}, got {kind!r}")


def poison_bundle(path: str | os.PathLike, kind: str, seed: int = 0) -> None:
    """Replace the bundle at ``path`` (classification, or a token bundle with one of
    :data:`TOKEN_POISON_KINDS`) with its poisoned version, example by example."""
    path = Path(path)
    reader = read_bundle(path)
    m = reader.manifest
    if m.task not in ("classification", "token"):
        raise FdError(f"{path}: poisoning is measured on classification and token bundles, "
                      f"found {m.task!r}")
    if m.task == "token" and kind not in TOKEN_POISON_KINDS:
        raise FdError(f"{path}: a token bundle is poisoned with one of "
                      f"{list(TOKEN_POISON_KINDS)}, got {kind!r}")
    blocks = list(reader.iter_blocks())  # read whole before the bundle is rewritten
    generator = torch.Generator().manual_seed(seed)
    with BundleWriter(path, codec=reader.codec, task=m.task, num_classes=m.num_classes,
                      label_names=m.label_space.get("names"),
                      label_fingerprint=m.label_fingerprint,
                      proxy_fingerprint=m.proxy_fingerprint, client_id=m.producer.client_id,
                      model_fingerprint=m.producer.model_fingerprint,
                      config=m.producer.config, seed=seed,
                      overwrite=True) as writer:
        for block in blocks:
            if m.task == "classification":
                writer.add(block.example_ids, poison_logits(block.dense().float(), kind,
                                                            generator))
                continue
            for part in block.chunks(TOKEN_ROWS_AT_ONCE):
                counts = part.row_offsets[1:] - part.row_offsets[:-1]
                writer.add(part.example_ids, poison_logits(part.dense().float(), kind,
                                                           generator), row_counts=counts)


def poisoned_clients(num_clients: int, fraction: float, seed: int = 0) -> list[int]:
    """Which clients are poisoned: ``round(fraction * num_clients)`` of them, drawn with
    ``seed``, in increasing order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"poison fraction must be in [0, 1), got {fraction}")
    count = round(fraction * num_clients)
    order = torch.randperm(num_clients, generator=torch.Generator().manual_seed(seed + 7919))
    return sorted(int(i) for i in order[:count])
