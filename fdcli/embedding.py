"""Embedding models and relations: any ``AutoModel`` encoder or image backbone, pooled to one
vector per example, and its similarities to a fixed set of anchor examples.

A model's embedding space cannot be averaged with another's (widths differ, and equal widths
are unrelated bases), but its *relations* can: for each example, the cosine similarities of
its embedding to N anchor embeddings, softmaxed at a temperature, form a distribution over the
anchors that any architecture can produce (SEED, Fang et al. 2021; CompRess, Koohpayegani et
al. 2020). fd writes those distributions as ordinary bundle rows whose "classes" are the
anchors (docs/embeddings.md).

Embeddings are centred on the mean of the anchors' embeddings before the cosine: the pooled
outputs of a ReLU network are all non-negative, and without centring every cosine is close to
one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import DataError
from .meta import read_fd_meta
from .models import (Classifier, ModelError, batch_inputs, dir_config, file_config,
                     processor_for)

POOLINGS = ("mean", "cls", "pooler")
#: the default similarity temperature of emitted rows
EMBEDDING_TEMPERATURE = 0.1


def load_encoder(source: str | os.PathLike, kind: str, *,
                 tokenizer: str | os.PathLike | None = None, seed: int = 0) -> Classifier:
    """An encoder (``AutoModel``, no task head) for ``kind`` inputs, from a model folder (a
    classifier's folder gives its backbone; the head is dropped) or a config file (random
    initialisation). Returned as a :class:`~fdcli.models.Classifier` with no labels, so the
    input batching of classifiers applies."""
    from transformers import AutoModel

    path = Path(source)
    if path.is_dir():
        config = dir_config(path, kind)
        try:
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # a classifier's head is dropped on purpose
            try:
                model = AutoModel.from_pretrained(str(path))
            finally:
                hf_logging.set_verbosity(verbosity)
        except Exception as exc:
            raise ModelError(f"{path}: could not load an encoder ({exc})") from None
        meta = read_fd_meta(path)
        processor = processor_for(kind, path, config, tokenizer)
    elif path.is_file():
        config = file_config(path, kind)
        torch.manual_seed(seed)
        try:
            model = AutoModel.from_config(config)
        except Exception as exc:
            raise ModelError(f"{path}: could not build an encoder ({exc})") from None
        meta = {}
        processor = processor_for(kind, None, config, tokenizer, path)
    else:
        raise ModelError(f"{path}: no such model directory or config file")
    return Classifier(model, processor, kind, [], meta)


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    return pooling


def pool(outputs, inputs: dict[str, torch.Tensor], pooling: str, where: str = "model"
         ) -> torch.Tensor:
    """One vector per example from a model's outputs ``[B, d]``.

    ``mean``: the mean of the last hidden states over real tokens (the attention mask), or
    over the spatial positions of a convolutional feature map ``[B, C, H, W]``; ``cls``: the
    first token's last hidden state (BERT's [CLS], ViT's class token); ``pooler``: the model's
    own pooled output (``pooler_output``, flattened)."""
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ModelError(f"{where}: this {type(outputs).__name__} has no pooler output; "
                             "use --pooling mean or cls")
        return pooled.flatten(1)
    hidden = outputs.last_hidden_state
    if hidden.dim() == 4:  # a convolutional backbone: [B, C, H, W]
        if pooling == "cls":
            raise ModelError(f"{where}: a convolutional feature map has no class token; use "
                             "--pooling mean or pooler")
        return hidden.mean((2, 3))
    if pooling == "cls":
        return hidden[:, 0]
    mask = inputs.get("attention_mask")
    if mask is None:
        return hidden.mean(1)
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def encode(enc: Classifier, values: Sequence[Any], pooling: str,
           max_length: int | None = None) -> torch.Tensor:
    """Pooled embeddings ``[B, d]`` of one batch of raw inputs, on the model's device, with
    gradients if the caller allows them."""
    param = next(enc.model.parameters())
    inputs = batch_inputs(enc, list(values), *([max_length] if max_length else []))
    inputs = {k: v.to(param.device, param.dtype if v.is_floating_point() else None)
              for k, v in inputs.items()}
    return pool(enc.model(**inputs), inputs, pooling, str(type(enc.model).__name__))


@torch.no_grad()
def embed(enc: Classifier, values: Sequence[Any], pooling: str, batch_size: int = 64,
          progress=None) -> torch.Tensor:
    """fp32 embeddings ``[N, d]`` of raw inputs on the CPU, in batches, in eval mode."""
    was_training = enc.model.training
    enc.model.eval()
    out = []
    try:
        for start in range(0, len(values), batch_size):
            out.append(encode(enc, values[start:start + batch_size], pooling).float().cpu())
            if progress is not None:
                progress(len(out[-1]))
    finally:
        enc.model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def pick_anchors(proxy_size: int, count: int, seed: int, where: str = "proxy") -> list[int]:
    """``count`` anchor example ids out of ``proxy_size``: the first ``count`` of a permutation
    drawn by torch's CPU generator seeded with ``seed``, sorted. Every institution that uses
    the same proxy, count and seed gets the same anchors."""
    if not 2 <= count <= proxy_size:
        raise DataError(f"{where}: --anchors must be between 2 and the proxy set's size "
                        f"({proxy_size}), got {count}")
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(proxy_size, generator=g)[:count].tolist())


def anchor_ids(label_space: dict[str, Any], where: str) -> list[int]:
    """The anchor example ids an embedding bundle's label space names."""
    names = label_space.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.isdigit() for n in names):
        raise DataError(f"{where}: an embedding bundle's label_space.names must list its "
                        "anchors' example ids as decimal strings")
    return [int(n) for n in names]


def normalized(z: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(z - center, dim=-1)


def relation_logits(z: torch.Tensor, anchors: torch.Tensor, center: torch.Tensor,
                    temperature: float, anchor_pos: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Cosine similarities of embeddings ``z`` ``[B, d]`` to the (already centred and
    normalised) anchor embeddings ``[N, d]``, divided by ``temperature``: ``[B, N]``. An
    example that is itself anchor ``anchor_pos[i]`` (>= 0) gets ``-inf`` there: its
    similarity to itself says nothing."""
    logits = normalized(z.float(), center) @ anchors.T / temperature
    if anchor_pos is not None:
        own = anchor_pos >= 0
        if bool(own.any()):
            rows = own.nonzero().view(-1)
            logits = logits.index_put((rows, anchor_pos[rows].long()),
                                      torch.tensor(-float("inf"), device=logits.device))
    return logits


def anchor_positions(example_ids: Sequence[int], anchors: Sequence[int]) -> torch.Tensor:
    """For each example id, its position among ``anchors``, or -1."""
    where = {a: i for i, a in enumerate(anchors)}
    return torch.tensor([where.get(int(e), -1) for e in example_ids], dtype=torch.int64)


def neighbours(z: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` nearest other examples of each row by cosine similarity: ``[N, k]`` ids."""
    u = torch.nn.functional.normalize(z.float(), dim=-1)
    out = []
    for start in range(0, len(u), 1024):  # [1024, N] similarities at a time
        sims = u[start:start + 1024] @ u.T
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -float("inf")
        out.append(sims.topk(k, dim=-1).indices)
    return torch.cat(out)


def neighbour_agreement(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Mean share of each example's ``k`` nearest neighbours that two embeddings of the same
    examples agree on (1: the same neighbour sets; k / (N - 1): chance)."""
    na, nb = neighbours(a, k), neighbours(b, k)
    hits = (na[:, :, None] == nb[:, None, :]).any(-1).float().sum(-1)
    return float(hits.mean() / k)
