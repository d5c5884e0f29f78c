"""A teacher bundle read a batch of examples at a time, for training a student on it."""

from __future__ import annotations

import torch

from .reader import LogitBlock


class TeacherRows:
    """A teacher bundle's rows at temperature T, kept in the bundle's own compact tensors and
    decoded one batch at a time, so no ``[tokens, vocab]`` teacher tensor is ever built.

    :meth:`batch` gives, for the batch's examples in order, either ``fd_dense`` (log-probs of
    a dense bundle) or ``fd_ids``/``fd_logp``/``fd_tail`` (sparse rows), one row per token
    position of each example (one per example for classification)."""

    def __init__(self, block: LogitBlock, temperature: float):
        if block.codec.shared_tensors:
            raise ValueError(f"a {block.codec.name!r} bundle cannot be read a batch at a time; "
                             "re-emit it with the dense, topk or sample encoding")
        self.block, self.temperature = block, temperature
        self.position = {int(e): i for i, e in enumerate(block.example_ids)}
        self.dense = block.codec.name == "dense"
        block.codec.sparse_at({k: v[:1] for k, v in block.tensors.items()},
                              block.num_classes, temperature)  # refuses a bad temperature now

    def batch(self, example_ids: list[int]) -> dict[str, torch.Tensor]:
        off = self.block.row_offsets
        rows = torch.cat([torch.arange(int(off[self.position[e]]), int(off[self.position[e] + 1]))
                          for e in example_ids])
        sub = {k: v[rows] for k, v in self.block.tensors.items()}
        codec, v, t = self.block.codec, self.block.num_classes, self.temperature
        if self.dense:
            return {"fd_dense": codec.dense_at(sub, v, t)}
        sp = codec.sparse_at(sub, v, t)
        return {"fd_ids": sp.ids, "fd_logp": sp.logp, "fd_tail": sp.tail_logp}
