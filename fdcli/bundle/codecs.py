"""Encodings of a row of logits: dense, topk, sample and lowrank.

A codec turns log-probabilities ``[R, V]`` into a few named tensors and back into
distributions. It knows the shapes and dtypes it writes, so a reader can check a shard before
trusting it, and it computes the fidelity of what it stored. No I/O and no training code.

Every reconstruction returns log-probabilities; the sparse view is a
:class:`~fdcli.bundle.sparse.SparseRows`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..errors import BundleError, quoted
from .kernels import sample_fused, topk_fused
from .sparse import (SparseRows, index_dtype, kl_rows, log_softmax_rows, plogp_rows,
                     temper_sparse)

#: log-probabilities are clamped here before they are rounded, so fp16 never overflows.
FP16_FLOOR = -60000.0
#: topk on the CPU computes the tail exactly (masked log-sum-exp) below this tail mass
EXACT_TAIL_BELOW = 1e-2


class Codec:
    """One encoding. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str]
    #: row-wise codecs encode each batch as it arrives; others encode a whole shard at once.
    row_wise: ClassVar[bool] = True
    #: tensors that belong to the whole shard rather than to rows.
    shared_tensors: ClassVar[tuple[str, ...]] = ()
    #: the encoding draws at random (the writer then seeds a generator per batch).
    random: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, logp: torch.Tensor, lse: torch.Tensor, num_classes: int,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Tensors for rows given as fp32 log-probs and raw-logit log-sum-exp
        (:func:`log_softmax_rows`)."""
        raise NotImplementedError

    def encode_logits(self, logits: torch.Tensor, num_classes: int,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Tensors for raw logits (any float dtype), on the logits' device; the writer copies
        them to the host and passes them through :meth:`finish`. ``generator`` is on that
        device. An optional ``_bad`` (0-d) counts the rows with a NaN, +inf or no finite
        logit, when the encoder finds them anyway (the writer then skips its own check)."""
        return self.encode(*log_softmax_rows(logits), num_classes, generator)

    def finish(self, tensors: dict[str, torch.Tensor], num_classes: int
               ) -> dict[str, torch.Tensor]:
        """Host-side tidying of :meth:`encode_logits`'s tensors (what would make the device
        synchronise, or what its kernels lack): ids become the stored unsigned dtype."""
        ids = tensors.get("ids")
        if ids is not None and ids.dtype != index_dtype(num_classes):
            tensors = tensors | {"ids": ids.to(index_dtype(num_classes))}
        return tensors

    def expected(self, rows: int, num_classes: int,
                 widths: dict[str, int]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """The dtype and shape of every tensor in a shard of ``rows`` rows. ``widths`` holds the
        free dimensions read from the shard itself (checked separately by :meth:`check_widths`)."""
        raise NotImplementedError

    def widths(self, header: dict[str, dict]) -> dict[str, int]:
        return {}

    def check_widths(self, widths: dict[str, int]) -> list[str]:
        return []

    def sparse(self, tensors: dict[str, torch.Tensor], num_classes: int) -> SparseRows:
        raise NotImplementedError

    def check_values(self, tensors: dict[str, torch.Tensor], num_classes: int) -> list[str]:
        """Problems with the values (not the shapes) of a decoded shard."""
        raise NotImplementedError

    def fidelity(self, logp: torch.Tensor, tensors: dict[str, torch.Tensor],
                 num_classes: int) -> dict[str, torch.Tensor]:
        """Per-row ``tail_mass``, ``kl`` and, where it applies, ``truncation_kl``, of the stored
        tensors against the exact log-probs ``logp`` they were encoded from."""
        raise NotImplementedError

    # shared ------------------------------------------------------------------------------
    def dense(self, tensors: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        return self.sparse(tensors, num_classes).to_dense()

    def sparse_at(self, tensors, num_classes: int, temperature: float) -> SparseRows:
        rows = self.sparse(tensors, num_classes)
        return rows if temperature == 1.0 else temper_sparse(rows, temperature)

    def dense_at(self, tensors, num_classes: int, temperature: float) -> torch.Tensor:
        if temperature == 1.0:
            return self.dense(tensors, num_classes)
        return self.sparse_at(tensors, num_classes, temperature).to_dense()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _ids_out(ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Ids in the stored dtype on the CPU; on a GPU, whose kernels lack most unsigned types,
    a signed one wide enough (:meth:`Codec.finish` converts them on the host)."""
    if ids.device.type == "cpu":
        return ids.to(index_dtype(num_classes))
    return ids.to(torch.int32 if num_classes <= 1 << 31 else torch.int64)


def _bad_rows(m: torch.Tensor) -> dict[str, torch.Tensor]:
    """``_bad``: how many rows have a row maximum ``m`` that is NaN or infinite (a NaN or
    +inf logit, or no finite one): the writer refuses the batch then, with no extra read."""
    return {"_bad": (~torch.isfinite(m)).sum()}


def _nonfinite(name: str, t: torch.Tensor, allow_neg_inf: bool = False) -> list[str]:
    bad = torch.isnan(t) | (t == math.inf)
    if not allow_neg_inf:
        bad |= t == -math.inf
    n = int(bad.sum())
    if n:
        what = "NaN or +Inf" if allow_neg_inf else "NaN or Inf"
        return [f"tensor '{name}': {n} value(s) are {what}; expected finite log-probabilities"]
    return []


def _ids_in_range(name: str, ids: torch.Tensor, num_classes: int) -> list[str]:
    top = int(ids.to(torch.int64).max()) if ids.numel() else 0
    if top >= num_classes:
        return [f"tensor '{name}': id {top} is out of range; "
                f"expected ids below num_classes={num_classes}"]
    return []


def _normalised(name: str, total_log: torch.Tensor, tol: float) -> list[str]:
    finite = torch.isfinite(total_log)
    if not bool(finite.all()):
        return [f"tensor '{name}': {int((~finite).sum())} row(s) sum to a non-finite mass"]
    worst = float(total_log.abs().max()) if total_log.numel() else 0.0
    if worst > tol:
        return [f"tensor '{name}': rows are not normalised (|log of total mass| up to {worst:.3g},"
                f" expected at most {tol:.3g})"]
    return []


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
        problems = _nonfinite("logp", logp, allow_neg_inf=True)
        if not problems:
            problems += _normalised("logp", torch.logsumexp(logp, -1), 0.02)
        return problems

    def fidelity(self, logp, tensors, num_classes):
        return {"tail_mass": torch.zeros(logp.shape[0]),
                "kl": kl_rows(logp, self.dense(tensors, num_classes))}


class TopKCodec(Codec):
    """The k most likely ids, their T=1 log-probs over the full vocabulary, the tail log-mass
    and the raw-logit log-sum-exp.

    Entries are sorted by id, ascending: a row's kept set then reads the same bytes whenever it
    recurs, which zstd exploits (see benchmarks/codec.py). ``value_dtype`` is ``"fp16"``
    (tensor ``logp``) or ``"int8"``: 8-bit codes of the square root of the probability in
    tensor ``logp_codes`` (dtype U8), ``sqrt(p) = code * scale``, so ``logp = 2 log(code *
    scale)``; code 0 (``sqrt(p) < scale / 2``) reads as ``sqrt(p) = scale / 4``.

    Quantising sqrt(p) uniformly gives each kept id a log-step proportional to 1/sqrt(p),
    which is what minimises the KL for a given number of levels: each entry costs about
    ``scale**2 / 6`` nats, so the default scale, ``1 / round(63 * sqrt(k / 16))``, holds the
    rounding KL near 7e-4 nats for any k.
    """

    name = "topk"

    def __init__(self, k: int = 16, value_dtype: str = "int8", scale: float | None = None):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"topk: k must be a positive integer, got {k!r}")
        if value_dtype not in ("fp16", "int8"):
            raise ValueError(f"topk: value_dtype must be 'fp16' or 'int8', got {value_dtype!r}")
        if value_dtype == "fp16" and scale is not None:
            raise ValueError("topk: scale applies to value_dtype 'int8' only")
        if value_dtype == "int8" and scale is None:
            scale = 1.0 / min(255, round(63 * math.sqrt(k / 16)))
        if scale is not None and not (isinstance(scale, (int, float)) and 1 / 255 <= scale <= 1):
            raise ValueError(f"topk: scale must be a number in [1/255, 1], got {scale!r}")
        self.k, self.value_dtype, self.scale = k, value_dtype, scale

    def params(self):
        p: dict[str, Any] = {"k": self.k, "value_dtype": self.value_dtype}
        if self.scale is not None:
            p["scale"] = self.scale
        return p

    def width(self, num_classes: int) -> int:
        return min(self.k, num_classes)

    def encode(self, logp, lse, num_classes, generator=None):
        k = self.width(num_classes)
        vals, ids = logp.topk(k, dim=-1, sorted=False)
        ids, order = ids.sort(dim=-1)
        vals = vals.gather(1, order)
        if k < num_classes:
            # log-sum-exp over the ids not kept: exact even when the tail is tiny, where
            # 1 - sum(kept) would be mostly rounding error
            tail = torch.logsumexp(logp.scatter(1, ids, -math.inf), dim=-1)
        else:
            tail = torch.full_like(lse, -math.inf)
        return self._pack(ids, vals, tail, lse, num_classes)

    def encode_logits(self, logits, num_classes, generator=None):
        """The fast path from raw logits, on their device and in their dtype, with no ``[R, V]``
        log-prob tensor: :meth:`encode_fused` on a GPU. Elsewhere torch's log-sum-exp and
        top-k (the fewest passes on a CPU), the tail as ``log1p(-sum kept p)`` in fp64 where
        it holds at least ``EXACT_TAIL_BELOW`` of the mass (relative error under 1e-4 there)
        and the exact masked log-sum-exp on the other rows."""
        if logits.device.type == "cuda":
            return self.encode_fused(logits, num_classes)
        k = self.width(num_classes)
        ids, raw = self._top(logits, k)
        lse = torch.logsumexp(logits.float(), dim=-1)
        tail = torch.full_like(lse, -math.inf)
        if k < num_classes:
            kept = (raw - lse[:, None]).double().exp().sum(-1)
            tail = torch.log1p(-kept.clamp(max=1.0)).float()
            sharp = (1 - kept < EXACT_TAIL_BELOW).nonzero().view(-1)
            if len(sharp):
                rows = logits[sharp].float().scatter(1, ids[sharp], -math.inf)
                tail[sharp] = torch.logsumexp(rows, dim=-1) - lse[sharp]
        return self._pack(ids, raw - lse[:, None], tail, lse, num_classes)

    def encode_fused(self, logits, num_classes, generator=None):
        """:meth:`encode_logits` with no host synchronisation and one read of the logits (for
        a GPU; runs anywhere): :func:`~fdcli.bundle.kernels.topk_fused`, whose tail is exact
        however small."""
        ids, raw, tail, lse, m = topk_fused(logits, self.width(num_classes))
        return self._pack(ids, raw - lse[:, None], tail, lse, num_classes) | _bad_rows(m)

    @staticmethod
    def _top(logits, k):
        """The k largest logits' ids, ascending, and those logits in fp32."""
        raw, ids = logits.topk(k, dim=-1, sorted=False)
        ids, order = ids.sort(dim=-1)
        return ids, raw.gather(1, order).float()

    def encode_sparse(self, rows: SparseRows, lse: torch.Tensor | None = None):
        """Tensors for rows that are already sparse (an aggregated teacher): the k most likely
        listed ids, the rest of the listed mass joining the tail. A row that lists fewer than
        k ids is first given unlisted ids, each with its even share of the tail (the tail
        rule of :mod:`~fdcli.bundle.sparse`, so the distribution does not change). ``lse``
        defaults to 0: the stored log-probs are then the logits."""
        k, v = self.width(rows.num_classes), rows.num_classes
        ids, logp, tail = rows.ids.long(), rows.logp.float(), rows.tail_logp.float()
        live = torch.isfinite(logp)
        listed = live.sum(-1)
        need = (k - listed).clamp(min=0)
        fill = torch.zeros_like(live)
        if bool((need > 0).any()):
            cand = torch.arange(2 * k)
            used = (cand[None, :, None] == torch.where(live, ids, -1)[:, None, :]).any(-1)
            pick = ~used & ((~used).cumsum(-1) <= need[:, None])
            others = (v - listed).clamp(min=1).float()
            share = (tail - others.log())[:, None].expand_as(pick)
            ids = torch.cat([ids, torch.where(pick, cand, 0)], -1)
            logp = torch.cat([logp, torch.where(pick, share, -math.inf)], -1)
            fill = torch.cat([fill, pick], -1)
            tail = tail + torch.log1p(-need / others)
        # padding entries rank below the unlisted ids given out above, even when those carry
        # no mass (a tail of zero, as in sampled rows): padding ids may repeat a kept id
        key = torch.where(torch.isfinite(logp) | ~fill, logp,
                          torch.full_like(logp, torch.finfo(logp.dtype).min))
        pos = key.topk(k, dim=-1, sorted=False).indices
        vals = logp.gather(1, pos)
        dropped = logp.scatter(1, pos, -math.inf)
        tail = torch.logsumexp(torch.cat([dropped, tail[:, None]], -1), -1)
        ids, order = ids.gather(1, pos).sort(dim=-1)
        vals = vals.gather(1, order)
        lse = torch.zeros(len(ids)) if lse is None else lse
        return self._pack(ids, vals, tail, lse, v)

    def _pack(self, ids, vals, tail, lse, num_classes):
        out = {"ids": _ids_out(ids, num_classes), "tail_logp": tail.float(),
               "lse": lse.float()}
        if self.value_dtype == "fp16":
            out["logp"] = vals.clamp(min=FP16_FLOOR).half()
        else:
            codes = torch.round((vals / 2).exp() / self.scale).clamp(0, 255)
            out["logp_codes"] = codes.to(torch.uint8)
        return out

    def expected(self, rows, num_classes, widths):
        k = self.width(num_classes)
        spec = {"ids": (index_dtype(num_classes), (rows, k)),
                "tail_logp": (torch.float32, (rows,)), "lse": (torch.float32, (rows,))}
        if self.value_dtype == "fp16":
            spec["logp"] = (torch.float16, (rows, k))
        else:
            spec["logp_codes"] = (torch.uint8, (rows, k))
        return spec

    def _values(self, tensors) -> torch.Tensor:
        if self.value_dtype == "fp16":
            return tensors["logp"].float()
        codes = tensors["logp_codes"].float()
        return 2 * (torch.where(codes > 0, codes, 0.25) * self.scale).log()

    def sparse(self, tensors, num_classes):
        vals = self._values(tensors)
        tail = tensors["tail_logp"]
        z = torch.logsumexp(torch.cat([vals, tail[:, None]], dim=-1), dim=-1)
        return SparseRows(tensors["ids"].to(torch.int64), vals - z[:, None], tail - z, num_classes)

    def check_values(self, tensors, num_classes):
        ids = tensors["ids"].to(torch.int64)
        problems = _ids_in_range("ids", ids, num_classes)
        if bool((ids[:, 1:] <= ids[:, :-1]).any()):
            problems.append("tensor 'ids': ids within a row are not strictly increasing")
        problems += _nonfinite("tail_logp", tensors["tail_logp"], allow_neg_inf=True)
        problems += _nonfinite("lse", tensors["lse"])
        if self.value_dtype == "fp16":
            problems += _nonfinite("logp", tensors["logp"])
            name, tol = "logp", 0.02
        else:
            name = "logp_codes"
            # each sqrt(p) is off by at most scale/2, so the mass by at most
            # scale * sum(sqrt p) + k scale^2 / 4 <= scale * sqrt(k) + k scale^2 / 4
            k = self.width(num_classes)
            tol = -math.log1p(-min(0.5, self.scale * math.sqrt(k) + k * self.scale ** 2 / 4)) \
                + 1e-3
        if problems:
            return problems
        vals = self._values(tensors)
        if vals.numel() and float(vals.max()) > tol:
            problems.append(f"tensor '{name}': a log-probability of {float(vals.max()):.4g} is "
                            "positive; expected values at most 0")
        total = torch.logsumexp(torch.cat([vals, tensors["tail_logp"][:, None]], -1), -1)
        return problems + _normalised(name, total, tol)

    def fidelity(self, logp, tensors, num_classes):
        ids = tensors["ids"].to(torch.int64)
        exact_kept = logp.gather(1, ids)
        tail = tensors["tail_logp"]
        exact = torch.cat([exact_kept, tail[:, None]], -1)
        stored = self.sparse(tensors, num_classes)
        quant_kl = kl_rows(exact, torch.cat([stored.logp, stored.tail_logp[:, None]], -1))
        # KL(p || kept ids + tail spread evenly), without a second [rows, V] tensor:
        # sum over unkept ids of p log p, minus tail * log(tail / (V - k))
        plogp = plogp_rows(logp)
        kept_plogp = plogp_rows(exact_kept)
        others = max(num_classes - ids.shape[1], 1)
        fill = torch.where(torch.isfinite(tail), tail - math.log(others), torch.zeros_like(tail))
        trunc = (plogp - kept_plogp - tail.exp() * fill).clamp(min=0)
        return {"tail_mass": tail.exp(), "kl": quant_kl, "truncation_kl": trunc}


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
        return self._counts(drawn, num_classes) | _bad_rows(m)

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
        return {"ids": _ids_out(ids, num_classes), "counts": count.to(torch.uint8)}

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
        problems = _ids_in_range("ids", tensors["ids"], num_classes)
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


from .lowrank import LowRankCodec  # noqa: E402  (it builds on the classes above)

CODECS: dict[str, type[Codec]] = {c.name: c for c in (DenseCodec, TopKCodec, SampleCodec,
                                                      LowRankCodec)}


def codec_from_spec(spec: Any, where: str = "encoding") -> Codec:
    """Build a codec from a manifest's ``encoding`` object (``{"name": ..., **params}``)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BundleError(f"{where}: expected an object with a 'name' string, found "
                          f"{quoted(spec)}")
    params = {k: v for k, v in spec.items() if k != "name"}
    cls = CODECS.get(spec["name"])
    if cls is None:
        raise BundleError(f"{where}.name: unknown encoding {quoted(spec['name'])}; expected one of "
                          f"{sorted(CODECS)}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{where}: invalid parameters {params} for encoding "
                          f"{quoted(spec['name'])}: {exc}") from None
