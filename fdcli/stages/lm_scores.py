"""How a causal LM scores token blocks: perplexity, next-token accuracy, per-block losses
(membership inference), and its agreement with a token bundle."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data import DataError
from ..lm import TextBlocks, iter_token_logits
from ..losses import dense_kd_loss, sparse_kd_loss


def token_metrics(lm, blocks, batch_size: int = 8, per_example: bool = False
                  ) -> dict[str, Any]:
    """Perplexity, mean NLL (nats per token) and next-token accuracy over every position that
    has a next token within its block; with ``per_example``, also each block's mean NLL
    (``losses``, for membership inference)."""
    nll, hits, count, losses = 0.0, 0, 0, []
    for _, logits, counts, nxt in iter_token_logits(lm, blocks, batch_size):
        keep = nxt != -100
        logits, nxt = logits[keep.to(logits.device)].float(), nxt[keep].to(logits.device)
        each = torch.nn.functional.cross_entropy(logits, nxt, reduction="none")
        nll += float(each.sum())
        hits += int((logits.argmax(-1) == nxt).sum())
        count += int(keep.sum())
        if per_example:  # each block's rows that have a next token
            sizes = [int(k.sum()) for k in keep.split(counts.tolist())]
            losses += [float(x.mean()) for x in each.cpu().split(sizes)]
    if count == 0:
        raise DataError("no position has a next token to score; expected blocks of at least "
                        "two tokens")
    result: dict[str, Any] = {"perplexity": math.exp(nll / count), "nll": nll / count,
                              "next_token_accuracy": hits / count, "tokens": count}
    if per_example:
        result["losses"] = losses
    return result


def teacher_agreement(lm, blocks: TextBlocks, reader, batch_size: int = 8) -> dict[str, float]:
    """How closely the model follows a token bundle on its proxy blocks, shard by shard:
    ``top1_match`` (the model's most likely id is the teacher's) and ``kl_kept`` (KL from the
    teacher's kept ids plus tail bucket to the model's mass on the same ids plus the rest)."""
    match, kl, rows = 0, 0.0, 0
    dense = reader.manifest.encoding["name"] == "dense"
    for block in reader.iter_blocks():
        logits_all = torch.cat([lg.float().cpu() for _, lg, _, _ in iter_token_logits(
            lm, [blocks.blocks[e] for e in block.example_ids.tolist()], batch_size)])
        for start in range(0, block.rows, 4096):
            sub = {k: v[start:start + 4096] for k, v in block.tensors.items()}
            logits = logits_all[start:start + 4096]
            if dense:
                t = block.codec.dense(sub, block.num_classes)
                top = t.argmax(-1)
                kl += float(dense_kd_loss(logits, t, 1.0)) * len(t)
            else:
                sp = block.codec.sparse(sub, block.num_classes)
                top = sp.ids.gather(1, sp.logp.argmax(-1, keepdim=True)).squeeze(1)
                kl += float(sparse_kd_loss(logits, sp.ids, sp.logp, sp.tail_logp, 1.0)) * len(top)
            match += int((logits.argmax(-1) == top).sum())
            rows += len(top)
    return {"top1_match": match / max(rows, 1), "kl_kept": kl / max(rows, 1), "rows": rows}
