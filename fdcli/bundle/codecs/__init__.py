"""Encodings of a row of logits: dense, topk, sample and lowrank, one
module each; this package registers them.

A codec turns log-probabilities ``[R, V]`` into a few named tensors and back into
distributions. It knows the shapes and dtypes it writes, so a reader can check a shard before
trusting it, and it computes the fidelity of what it stored. No I/O and no training code.

Every reconstruction returns log-probabilities; the sparse view is a
:class:`~fdcli.bundle.sparse.SparseRows`.
"""

from __future__ import annotations

from typing import Any

from ...errors import BundleError, quoted
from .base import Codec
from .dense import DenseCodec
from .lowrank import LowRankCodec
from .sample import SampleCodec
from .topk import TopKCodec

__all__ = ["CODECS", "Codec", "DenseCodec", "LowRankCodec", "SampleCodec", "TopKCodec",
           "codec_from_spec"]

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
