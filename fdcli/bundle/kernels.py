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
