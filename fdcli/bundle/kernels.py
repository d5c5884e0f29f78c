"""The codecs' device-side encoders: they read the ``[R, V]`` logits in their own dtype, once,
through one fused pass (:func:`block_stats`), keep no ``[R, V]`` fp32 copy and never make the
host wait for the device.

On a GPU they run through ``torch.compile`` (one fused kernel per function; set
``FD_COMPILE=0`` to run them eagerly); elsewhere, or if compilation fails, they run as ordinary
torch operations, with the same results up to summation order.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

#: the encoders read the vocabulary in runs of this many ids: sample draws a run, then an id
#: within it; topk looks for its ids only in the k runs with the largest maxima
SAMPLE_BLOCK = TOPK_BLOCK = 128
_COMPILED: dict = {}


def _fused(fn):
    def call(x: torch.Tensor, *args):
        if x.device.type != "cuda" or os.environ.get("FD_COMPILE", "1") == "0":
            return fn(x, *args)
        compiled = _COMPILED.get(fn)
        if compiled is None:
            compiled = _COMPILED[fn] = torch.compile(fn, dynamic=True)
        try:
            return compiled(x, *args)
        except Exception as exc:  # no compiler on this machine: the eager form, said once
            warnings.warn(f"torch.compile failed for fd's {fn.__name__} ({type(exc).__name__}:"
                          f" {str(exc)[:200]}); running it eagerly", RuntimeWarning,
                          stacklevel=2)
            _COMPILED[fn] = fn
            return fn(x, *args)

    call.__name__ = call.__qualname__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


@_fused
def block_stats(x: torch.Tensor, inv_temperature: float, block: int):
    """For logits ``x`` at temperature ``1 / inv_temperature``, in one read: the row maximum
    ``m`` of the tempered logits, and for each run of ``block`` columns its maximum and its
    ``sum exp(x / T - m)`` (``[R, ceil(V / block)]`` each; the last run padded with -inf).
    Each run is reduced on its own (its maximum, then its mass relative to it) and the runs
    are combined afterwards, so the one kernel reads every logit once."""
    xf = x.float() * inv_temperature
    pad = (-xf.shape[-1]) % block
    runs = torch.nn.functional.pad(xf, (0, pad), value=-float("inf")).view(
        xf.shape[0], -1, block)
    run_max = runs.amax(-1)
    finite = torch.isfinite(run_max)
    safe = torch.where(finite, run_max, torch.zeros_like(run_max))
    local = torch.exp(runs - safe[..., None]).sum(-1)
    m = run_max.amax(-1)
    # runs of -inf logits (masked ids) hold no mass; a NaN or +inf is refused by the writer
    mass = torch.where(finite, local * torch.exp(safe - m[:, None]), torch.zeros_like(local))
    return m, run_max, mass


def topk_fused(logits: torch.Tensor, k: int):
    """``(ids, raw, tail, lse, m)`` of the k largest logits per row: ids ascending, their raw
    logits in fp32, the log of the mass outside them (relative to the whole row), the row's
    log-sum-exp and maximum. The k largest logits all lie in the k runs of
    :data:`TOPK_BLOCK` ids with the largest maxima (each kept id's run has a maximum at least
    the k-th largest logit), so top-k runs over those runs alone. The tail is the mass of the
    other runs plus that of the runs' ids not kept: sums of positive terms, exact however
    small."""
    rows, v = logits.shape
    b = TOPK_BLOCK
    m, run_max, run_mass = block_stats(logits, 1.0, b)
    runs = run_max.topk(min(k, run_max.shape[1]), dim=-1, sorted=False).indices
    cols = (runs[..., None] * b + torch.arange(b, device=logits.device)).view(rows, -1)
    inside = cols < v
    vals = torch.where(inside, logits.gather(1, cols.clamp(max=v - 1)).float(), -math.inf)
    # ids whose logit is -inf rank above the padding past the vocabulary
    key = torch.where(inside, vals.nan_to_num(neginf=torch.finfo(vals.dtype).min), -math.inf)
    pos = key.topk(k, dim=-1, sorted=False).indices
    ids, order = cols.gather(1, pos).sort(dim=-1)
    raw = vals.gather(1, pos).gather(1, order)
    lse = m + run_mass.sum(-1).log()
    tail = torch.full_like(lse, -math.inf)
    if k < v:
        others = run_mass.scatter(1, runs, 0.0).sum(-1)
        left = torch.exp(vals - m[:, None]).scatter(1, pos, 0.0).sum(-1)
        tail = (others + left).log() + m - lse
    return ids, raw, tail, lse, m


def sample_fused(logits: torch.Tensor, draws: int, temperature: float,
                 generator: torch.Generator | None = None):
    """``(drawn, m)``: ``draws`` ids per row ``[R, draws]`` sampled with replacement from the
    softmax at ``temperature``, and the row maximum of the tempered logits. Each draw picks a
    run of :data:`SAMPLE_BLOCK` ids by inverse CDF over the runs' masses, then an id by inverse
    CDF within its run: exact sampling, with ``[R, draws, SAMPLE_BLOCK]`` temporaries."""
    rows, v = logits.shape
    dev, b = logits.device, SAMPLE_BLOCK
    inv_t = 1.0 / temperature
    m, _, runs = block_stats(logits, inv_t, b)
    cdf = runs.cumsum(-1)
    u = torch.rand(rows, draws, generator=generator, device=dev) * cdf[:, -1:]
    run = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)
    before = torch.where(run > 0, cdf.gather(1, (run - 1).clamp(min=0)), torch.zeros_like(u))
    cols = run[..., None] * b + torch.arange(b, device=dev)
    inside = cols < v
    x = logits.gather(1, cols.clamp(max=v - 1).view(rows, -1)).view(rows, draws, b)
    e = torch.where(inside, torch.exp(x.float() * inv_t - m[:, None, None]),
                    torch.zeros((), device=dev))
    inner = e.cumsum(-1)
    # the run's mass summed here may differ from the fused pass's in the last bit
    rest = torch.minimum(u - before, torch.nextafter(inner[..., -1], torch.zeros_like(u)))
    j = torch.searchsorted(inner, rest[..., None], right=True).squeeze(-1)
    return (run * b + j.clamp(max=b - 1)).clamp(max=v - 1), m
