"""Emitting and aggregating under several processes (torchrun, accelerate launch): which
examples each process takes, and joining the parts they write into one bundle
(docs/scaling.md)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from ..bundle import BundleManifest
from ..bundle.merge import PART_KEY, merge_bundles, part_path
from ..bundle.safeio import Limits
from ..launch import Ranks, share
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


def resume_start(writer, first: int, advance=None, rows_before=None) -> int:
    """The example id to start the batches at: ``first``, or when ``writer`` resumes a
    partial bundle the one after the batches it holds (the skipped examples, or
    ``rows_before(id)`` rows, counted on the progress bar ``advance``)."""
    if writer.resume_note:
        from ..console import log

        log("fd emit-logits", writer.resume_note)
    if writer.resume_after is None or writer.resume_after < first:
        return first
    begin = writer.resume_after + 1
    if advance is not None:
        advance(rows_before(begin) if rows_before else begin - first)
    return begin


def all_sum(t):
    """The tensor ``t`` summed over every process of the launch (CPU tensors, over gloo)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    total = t.clone()
    dist.all_reduce(total, group=dist.new_group(backend="gloo"))
    return total


def part_target(out, r: Ranks, config: dict) -> Path:
    """Where this process writes: ``out`` itself alone, else its part (numbered in
    ``config``, which the manifest records)."""
    if r.world == 1:
        return Path(out)
    config[PART_KEY] = [r.rank, r.world]
    return part_path(out, r.rank, r.world)


def finish_parts(out, r: Ranks, written: BundleManifest, overwrite: bool, limits: Limits,
                 sign_key) -> BundleManifest:
    """The emit's manifest: ``written`` alone; else, once every process has written its part,
    the merged bundle's in process 0 (when it can see every part) and the part's elsewhere."""
    if r.world == 1:
        return written
    return _join_parts(out, r, overwrite, limits, sign_key) or written


def _join_parts(out, r: Ranks, overwrite: bool, limits: Limits,
                sign_key) -> BundleManifest | None:
    """Process 0 merges the parts into ``out`` when it can see them all; returns the merged
    manifest there, None elsewhere."""
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
