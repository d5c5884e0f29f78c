"""Describe a bundle (from its manifest) or a lone shard (from its own metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BundleError
from .reader import read_manifest
from .safeio import DEFAULT_LIMITS, Limits, read_regular
from .shards import decompress_shard


def describe(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """``{"kind", "summary", "checked", ...}`` for a bundle folder or a
    ``shard-*.safetensors.zst`` file; ``checked`` says how little was read."""
    path = Path(path)
    if not path.is_dir() and path.name.endswith(".safetensors.zst"):
        return _describe_shard(path, limits)
    m = read_manifest(path, limits)
    stored = sum(s.bytes for s in m.shards)
    names = m.label_space.get("names")
    summary = {
        "format": f"{m.format} v{m.version}",
        "task": m.task,
        "encoding": ", ".join([m.encoding["name"]] + [f"{k}={v}" for k, v in m.encoding.items()
                                                      if k != "name"]),
        "num_classes": m.num_classes,
        "labels": (", ".join(names[:8]) + (", ..." if len(names) > 8 else "")) if names else "-",
        "label_fingerprint": m.label_fingerprint,
        "proxy_fingerprint": m.proxy_fingerprint,
        "client_id": m.producer.client_id,
        "model_fingerprint": m.producer.model_fingerprint,
        "fd_version": m.producer.fd_version,
        "created": m.producer.created,
        "examples": m.examples,
        "rows": m.rows,
        "shards": len(m.shards),
        "stored_bytes": stored,
        "bytes_per_row": round(stored / max(m.rows, 1), 2),
        "mean_tail_mass": m.fidelity.get("mean_tail_mass"),
        "mean_kl_nats": m.fidelity.get("mean_kl_nats"),
        "mean_truncation_kl_nats": m.fidelity.get("mean_truncation_kl_nats"),
        "provenance": f"{len(m.provenance)} input bundle(s)" if m.provenance else "-",
    }
    return {"kind": "bundle", "summary": summary, "manifest": m.to_dict(),
            "checked": f"the manifest only; fd verify {path} checks the shards, the signature "
                       "and the values"}


def _describe_shard(path: Path, limits: Limits) -> dict[str, Any]:
    try:
        data = read_regular(path, limits.max_shard_bytes, "max_shard_bytes")
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    raw, header, meta = decompress_shard(data, None, str(path), limits.max_shard_bytes)
    tensors = {name: f"{e['dtype']}{e['shape']}" for name, e in sorted(header.items())}
    summary: dict[str, Any] = dict(meta)
    if "encoding" in summary:
        try:
            summary["encoding"] = json.loads(summary["encoding"])
        except json.JSONDecodeError:
            pass
    summary.update({f"tensor {k}": v for k, v in tensors.items()})
    summary["stored_bytes"] = len(data)
    summary["raw_bytes"] = len(raw)
    return {"kind": "shard", "summary": summary, "metadata": meta, "tensors": tensors,
            "checked": "this shard's compression and safetensors header only; fd verify "
                       "BUNDLE checks its values, its sha256 and the manifest"}
