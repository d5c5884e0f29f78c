"""Row statistics of raw logits for the codecs' device-side encoders: each reads the ``[R, V]``
logits in their own dtype and returns per-row (or per-block) sums in fp32, with no
``[R, V]`` fp32 copy kept and no host synchronisation.

On a GPU they run through ``torch.compile`` (one fused kernel per function; set
``FD_COMPILE=0`` to run them eagerly); elsewhere, or if compilation fails, they run as ordinary
torch operations, with the same results up to summation order.
"""

from __future__ import annotations

import os
import warnings

import torch

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
def topk_row_stats(x: torch.Tensor, thr: torch.Tensor):
    """For logits ``x`` and each row's k-th largest logit ``thr``: the row maximum ``m``, the
    sum of ``exp(x - m)`` over the row, over the entries below ``thr``, and the number of
    entries equal to ``thr``. Summing only the entries below the threshold gives the tail mass
    without cancellation, however small it is."""
    xf = x.float()
    m = xf.amax(-1, keepdim=True)
    e = torch.exp(xf - m)
    t = thr[:, None]
    below = torch.where(xf < t, e, torch.zeros_like(e)).sum(-1)
    at = (xf == t).sum(-1)
    return m.squeeze(-1), e.sum(-1), below, at


@_fused
def block_masses(x: torch.Tensor, inv_temperature: float, block: int):
    """For logits ``x`` at temperature ``1 / inv_temperature``: the row maximum ``m`` of the
    tempered logits and ``sum exp(x / T - m)`` over each run of ``block`` columns
    (``[R, ceil(V / block)]``; the last run padded with zeros)."""
    xf = x.float() * inv_temperature
    m = xf.amax(-1, keepdim=True)
    e = torch.exp(xf - m)
    pad = (-e.shape[-1]) % block
    e = torch.nn.functional.pad(e, (0, pad))
    return m.squeeze(-1), e.view(e.shape[0], -1, block).sum(-1)
