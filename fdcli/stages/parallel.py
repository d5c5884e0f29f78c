"""Emitting under several processes (torchrun, accelerate launch): which examples each
process takes, and joining the parts they write into one bundle (docs/scaling.md)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from ..bundle import BundleManifest
from ..bundle.merge import merge_bundles, part_path
from ..bundle.safeio import Limits
from ..devices import Ranks, share
from ..errors import FdWarning


def batch_share(items: int, batch_size: int, r: Ranks) -> range:
    """The items (blocks, or examples) rank ``r`` emits: a contiguous share of whole batches,
    so that every batch is the batch a one-process emit computes."""
    total = -(-items // batch_size)
    batches = share(total, r)
    if not batches:
        raise ValueError(f"{r.world} processes for {total} batches of --batch-size "
                         f"{batch_size}: process {r.rank} would have none; use fewer processes "
                         "or a smaller --batch-size")
    return range(min(batches.start * batch_size, items), min(batches.stop * batch_size, items))


def join_parts(out, r: Ranks, overwrite: bool, limits: Limits,
               sign_key) -> BundleManifest | None:
    """After every process has written its part: process 0 merges them into ``out`` when it
    can see them all; returns the merged manifest there, None elsewhere."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    group = dist.new_group(backend="gloo")
    dist.barrier(group=group)
    merged = None
    if r.main:
        parts = [part_path(out, i, r.world) for i in range(r.world)]
        missing = [str(p) for p in parts if not Path(p).is_dir()]
        if missing:
            warnings.warn(f"{out}: process 0 cannot see the parts {missing} (no shared "
                          "filesystem?); gather every part in one place and run fd merge "
                          f"{' '.join(str(p) for p in parts)} --out {out}", FdWarning,
                          stacklevel=3)
        else:
            merged = merge_bundles(parts, out, overwrite=overwrite, limits=limits,
                                   sign_key=sign_key)
            for p in parts:
                shutil.rmtree(p, ignore_errors=True)
    dist.barrier(group=group)
    return merged
