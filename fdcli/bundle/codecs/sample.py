"""The sample codec: ids drawn per row from the distribution (importance-sampled targets)."""

from __future__ import annotations

import math

import torch

from ...errors import BundleError
from ..kernels import sample_fused
from ..sparse import SparseRows, index_dtype
from .base import Codec, bad_rows, ids_in_range, ids_out


class SampleCodec(Codec):
    """Importance-sampled ids with counts (Sparse Logit Sampling / RS-KD).

    Each row draws ``draws`` ids with replacement from the teacher at ``temperature`` and keeps
    the unique ids (``ids``) with their counts (``counts``, U8), most frequent first, padded
    with count 0. ``counts / draws`` is an unbiased estimate of the tempered distribution.
    """

    name = "sample"
    random = True

    def __init__(self, draws: int = 16, temperature: float = 1.0):
        if not isinstance(draws, int) or not 1 <= draws <= 255:
            raise ValueError(f"sample: draws must be an integer in [1, 255], got {draws!r}")
        if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
            raise ValueError(f"sample: temperature must be positive, got {temperature!r}")
        self.draws, self.temperature = draws, float(temperature)

    def params(self):
        return {"draws": self.draws, "temperature": self.temperature}

    def encode(self, logp, lse, num_classes, generator=None):
        return self.finish(self.encode_logits(logp, num_classes, generator), num_classes)

    def encode_logits(self, logits, num_classes, generator=None):
        """Draws from raw logits on their device: :meth:`encode_fused` on a GPU, torch's
        softmax and multinomial elsewhere. The ids and counts keep ``min(draws,
        num_classes)`` columns; :meth:`finish` trims them."""
        if logits.device.type == "cuda":
            return self.encode_fused(logits, num_classes, generator)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        drawn = torch.multinomial(probs, self.draws, replacement=True, generator=generator)
        return self._counts(drawn, num_classes)

    def encode_fused(self, logits, num_classes, generator=None):
        """Draws with no ``[R, V]`` fp32 tensor and no host synchronisation (for a GPU; runs
        anywhere): :func:`~fdcli.bundle.kernels.sample_fused`."""
        drawn, m = sample_fused(logits, self.draws, self.temperature, generator)
        return self._counts(drawn, num_classes) | bad_rows(m)

    def _counts(self, drawn: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
        """Unique ids and their counts per row of draws ``[R, draws]``, most frequent first
        (ties by id), padded with id 0 and count 0 to ``min(draws, num_classes)`` columns;
        tensor ops only."""
        rows, d = drawn.shape
        s = drawn.sort(-1).values
        new = torch.ones_like(s, dtype=torch.bool)
        new[:, 1:] = s[:, 1:] != s[:, :-1]
        pos = torch.arange(d, device=s.device).expand(rows, d)
        start = torch.where(new, pos, d)
        after = torch.cat([start[:, 1:], torch.full((rows, 1), d, device=s.device)], 1)
        nxt = after.flip(1).cummin(1).values.flip(1)  # the next run's start
        count = torch.where(new, nxt - pos, 0)
        key = torch.where(new, (d - count) * num_classes + s, (d + 1) * num_classes)
        order = key.argsort(-1)[:, :min(d, num_classes)]
        count = count.gather(1, order)
        ids = torch.where(count > 0, s.gather(1, order), 0)
        return {"ids": ids_out(ids, num_classes), "counts": count.to(torch.uint8)}

    def finish(self, tensors, num_classes):
        width = max(1, int((tensors["counts"] > 0).sum(-1).max())) \
            if len(tensors["counts"]) else 1
        return super().finish({k: v[:, :width].contiguous() for k, v in tensors.items()},
                              num_classes)

    def widths(self, header):
        shape = header.get("ids", {}).get("shape", [0, 0])
        return {"unique": int(shape[1]) if len(shape) == 2 else -1}

    def check_widths(self, widths):
        u = widths["unique"]
        if not 1 <= u <= self.draws:
            return [f"tensor 'ids': width {u} is impossible; expected between 1 and "
                    f"draws={self.draws}"]
        return []

    def expected(self, rows, num_classes, widths):
        u = widths["unique"]
        return {"ids": (index_dtype(num_classes), (rows, u)), "counts": (torch.uint8, (rows, u))}

    def sparse_at(self, tensors, num_classes, temperature):
        if temperature != self.temperature:
            raise BundleError(f"this 'sample' bundle estimates the teacher at temperature "
                              f"{self.temperature}, the temperature it was drawn at; it cannot be"
                              f" read at {temperature}. Read it at {self.temperature}, or re-emit"
                              f" it with a sampling temperature of {temperature}.")
        return self.sparse(tensors, num_classes)

    def dense_at(self, tensors, num_classes, temperature):
        return self.sparse_at(tensors, num_classes, temperature).to_dense()

    def sparse(self, tensors, num_classes):
        counts = tensors["counts"].float()
        logp = (counts / self.draws).log()
        rows = counts.shape[0]
        return SparseRows(tensors["ids"].to(torch.int64), logp, torch.full((rows,), -math.inf),
                          num_classes)

    def check_values(self, tensors, num_classes):
        problems = ids_in_range("ids", tensors["ids"], num_classes)
        sums = tensors["counts"].to(torch.int32).sum(-1)
        bad = int((sums != self.draws).sum())
        if bad:
            problems.append(f"tensor 'counts': {bad} row(s) do not add up to draws={self.draws}")
        return problems

    def fidelity(self, logp, tensors, num_classes):
        p_log = torch.log_softmax(logp / self.temperature, dim=-1)
        ids = tensors["ids"].to(torch.int64)
        est = self.sparse(tensors, num_classes).logp
        at_ids = p_log.gather(1, ids)
        live = torch.isfinite(est)
        # KL(estimate || p): the estimate is zero on unsampled ids, so this direction is finite
        kl = torch.where(live, est.exp() * (est - at_ids), torch.zeros_like(est)).sum(-1)
        covered = torch.where(live, at_ids.exp(), torch.zeros_like(est)).sum(-1)
        return {"tail_mass": (1 - covered).clamp(min=0), "kl": kl}
