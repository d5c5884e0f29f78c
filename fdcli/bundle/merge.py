"""Join the parts of one emit, written by several processes, into one bundle.

Under ``torchrun`` or ``accelerate launch`` each process of ``fd emit-logits`` writes a part: a
complete bundle of its share of the proxy set (docs/scaling.md). :func:`merge_bundles` checks
every part like any bundle, requires them to be the same emit (task, encoding, label space,
proxy, producer and configuration, apart from the part number) over disjoint examples, and
writes one bundle whose shards are the parts' shards, byte for byte, in example order. No
training code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from ..errors import BundleError, IncompatibleBundlesError
from ..outputs import (check_free, fsync_dir, make_parents, move_into_place, remove_created,
                       temporary_sibling)
from .manifest import MANIFEST, BundleManifest, ShardInfo
from .reader import verify_bundle
from .safeio import DEFAULT_LIMITS, Limits, read_regular
from .shards import write_file_atomic

#: the producer.config key that numbers a part: ``[rank, world]``
PART_KEY = "part"


def part_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    """Where process ``rank`` of ``world`` writes its part of the bundle ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.part{rank}of{world}")


def _identity(m: BundleManifest) -> dict:
    config = {k: v for k, v in m.producer.config.items() if k != PART_KEY}
    return {"task": m.task, "encoding": m.encoding, "num_classes": m.num_classes,
            "label_space": m.label_space, "proxy": m.proxy,
            "producer.client_id": m.producer.client_id,
            "producer.model_fingerprint": m.producer.model_fingerprint,
            "producer.fd_version": m.producer.fd_version, "producer.config": config}


def merge_bundles(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                  overwrite: bool = False, limits: Limits = DEFAULT_LIMITS,
                  trusted_keys: dict | None = None, sign_key=None) -> BundleManifest:
    """Write the bundle ``out`` from the parts of one emit; returns its manifest.

    Each part is verified in full (and must be signed by a key in ``trusted_keys`` when given).
    The merged manifest records the parts' common configuration without the part number, and
    ``processes`` (how many parts); its fidelity figures are the parts' means weighted by rows.
    ``sign_key`` signs the merged manifest (the parts' signatures cover only their own)."""
    paths = [Path(p) for p in parts]
    if not paths:
        raise ValueError("give at least one part to merge")
    if len({p.resolve() for p in paths}) != len(paths):
        raise IncompatibleBundlesError("the same part is given twice")
    out = Path(out)
    check_free(out, overwrite)
    manifests, ids = [], []
    for p in paths:
        report = verify_bundle(p, limits, trusted_keys)
        if not report.ok:
            raise BundleError.collected(str(p), report.problems)
        manifests.append(report.manifest)
        ids.append(report.example_ids)
    _check_disjoint(paths, ids)
    firsts = [int(i.min()) for i in ids]
    base = _identity(manifests[0])
    for p, m in zip(paths[1:], manifests[1:]):
        differ = [k for k, v in _identity(m).items() if v != base[k]]
        if differ:
            raise IncompatibleBundlesError(
                f"{p}: {', '.join(differ)} differ from {paths[0]}; only the parts of one emit "
                "(the same model, proxy, encoding and settings) can be merged")
    order = sorted(range(len(paths)), key=lambda i: firsts[i])
    return _write(out, [paths[i] for i in order], [manifests[i] for i in order], overwrite,
                  limits, sign_key)


def _check_disjoint(paths: list[Path], ids: list[torch.Tensor]) -> None:
    """Refuse an example id that two parts both hold (the smallest such id is named)."""
    owner = torch.cat([torch.full((len(i),), k) for k, i in enumerate(ids)])
    order = torch.sort(torch.cat(ids) * len(ids) + owner).indices  # by id, then by part
    every, owner = torch.cat(ids)[order], owner[order]
    twice = (every[1:] == every[:-1]).nonzero().view(-1)
    if len(twice):
        j = int(twice[0])
        raise IncompatibleBundlesError(
            f"{paths[int(owner[j + 1])]}: example {int(every[j])} is also in "
            f"{paths[int(owner[j])]}; parts of one emit hold disjoint examples")


def _write(out: Path, paths: list[Path], manifests: list[BundleManifest], overwrite: bool,
           limits: Limits, sign_key) -> BundleManifest:
    first = manifests[0]
    rows = sum(m.rows for m in manifests)
    created = make_parents(out)
    tmp = temporary_sibling(out)
    try:
        shards = []
        for path, m in zip(paths, manifests):
            for info in m.shards:
                name = f"shard-{len(shards):05d}.safetensors.zst"
                data = read_regular(path / info.file, limits.max_shard_bytes, "max_shard_bytes",
                                    expected=info.bytes)
                write_file_atomic(tmp / name, data)
                shards.append(ShardInfo(file=name, sha256=info.sha256, rows=info.rows,
                                        examples=info.examples, bytes=info.bytes,
                                        raw_bytes=info.raw_bytes))
        fidelity = {}
        for key, val in first.fidelity.items():
            vals = [m.fidelity.get(key) for m in manifests]
            fidelity[key] = None if val is None or any(v is None for v in vals) else round(
                sum(v * m.rows for v, m in zip(vals, manifests)) / max(rows, 1), 8)
        config = {k: v for k, v in first.producer.config.items() if k != PART_KEY}
        config["processes"] = len(manifests)
        merged = BundleManifest.from_dict(first.to_dict() | {
            "rows": rows, "examples": sum(m.examples for m in manifests),
            "shards": [vars(s) for s in shards], "fidelity": fidelity,
            "producer": vars(first.producer) | {"config": config}},
            max_classes=limits.max_classes)
        manifest = merged.to_json().encode()
        write_file_atomic(tmp / MANIFEST, manifest)
        if sign_key is not None:
            from .signing import sign_folder

            sign_folder(tmp, manifest, sign_key)
        fsync_dir(tmp)
        move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        raise
    return merged
