"""fd aggregate: check N bundles against each other and combine them per example."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch

from ..bundle import BundleManifest, BundleWriter, DenseCodec, read_bundle
from ..errors import IncompatibleBundlesError
from ..progress import progress_bar
from ..rules import CONFIDENCE_MEASURES, RULES


def _manifest_digest(path: Path) -> str:
    return hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()


def check_compatible(readers: Sequence) -> None:
    """Refuse bundles that differ in task, label space or proxy set, naming the bundle."""
    if not readers:
        raise IncompatibleBundlesError("aggregate needs at least one bundle")
    first = readers[0]
    problems = []
    for r in readers[1:]:
        for field, a, b in (
                ("task", first.manifest.task, r.manifest.task),
                ("label_space.fingerprint", first.manifest.label_fingerprint,
                 r.manifest.label_fingerprint),
                ("proxy.fingerprint", first.manifest.proxy_fingerprint,
                 r.manifest.proxy_fingerprint)):
            if a != b:
                hint = ""
                if field.startswith("label"):
                    hint = (f" (labels {r.manifest.label_space.get('names')} vs "
                            f"{first.manifest.label_space.get('names')})")
                elif field.startswith("proxy"):
                    hint = " (it was emitted on a different proxy dataset)"
                problems.append(f"{r.path}: {field} is {b!r}, but {first.path} has {a!r}{hint}")
    if first.manifest.task != "classification" and not problems:
        problems.append(f"{first.path}: task {first.manifest.task!r} bundles are not "
                        "aggregated yet; expected 'classification'")
    if problems:
        raise IncompatibleBundlesError.collected("bundles", problems)


def aggregate(bundles: Sequence[str | Path], out: str | Path, *, rule: str = "confidence",
              confidence_measure: str = "max", tau: float = 1.0, era_temperature: float = 0.1,
              trim: float = 0.2, seed: int = 0, overwrite: bool = False,
              progress: bool = True) -> BundleManifest:
    """Combine classification bundles per example with ``rule`` (see :mod:`fdcli.rules`) and
    write the result as a dense bundle whose provenance lists every input and its sha256."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    if confidence_measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"confidence measure must be one of {CONFIDENCE_MEASURES}")
    readers = [read_bundle(b) for b in bundles]
    check_compatible(readers)
    with progress_bar(len(readers), "reading bundles", progress) as advance:
        blocks = []
        for r in readers:
            blocks.append(r.read_all())
            advance(1)
    ids = torch.unique(torch.cat([b.example_ids for b in blocks]))
    position = {int(e): i for i, e in enumerate(ids)}
    num_classes = readers[0].manifest.num_classes
    probs = torch.zeros(len(blocks), len(ids), num_classes, dtype=torch.float64)
    present = torch.zeros(len(blocks), len(ids), dtype=torch.bool)
    for k, block in enumerate(blocks):
        rows = torch.tensor([position[int(e)] for e in block.example_ids])
        probs[k, rows] = block.dense().double().exp()
        present[k, rows] = True
    params: dict[str, Any] = {}
    if rule == "confidence":
        params = {"measure": confidence_measure, "tau": tau}
    elif rule == "entropy-reduction":
        params = {"temperature": era_temperature}
    elif rule == "trimmed-mean":
        params = {"trim": trim}
    elif rule == "weighted":
        counts = [r.manifest.producer.config.get("train_examples") for r in readers]
        missing = [str(r.path) for r, c in zip(readers, counts) if not isinstance(c, int)]
        if missing:
            raise IncompatibleBundlesError(f"rule 'weighted' needs each bundle to declare its "
                                           f"client's train_examples; missing in {missing}")
        params = {"counts": counts}
    combined = RULES[rule](probs, present, **params)
    logits = combined.clamp_min(1e-30).log().float()
    first = readers[0].manifest
    provenance = [{"path": str(r.path), "client_id": r.manifest.producer.client_id,
                   "manifest_sha256": _manifest_digest(r.path),
                   "shards_sha256": [s.sha256 for s in r.manifest.shards],
                   "examples": r.manifest.examples} for r in readers]
    config = {"rule": rule, **params,
              "inputs": [str(b) for b in bundles],
              "coverage": {str(r.path): r.manifest.examples for r in readers}}
    with BundleWriter(out, codec=DenseCodec(), task="classification", num_classes=num_classes,
                      label_names=first.label_space.get("names"),
                      label_fingerprint=first.label_fingerprint,
                      proxy_fingerprint=first.proxy_fingerprint, client_id="coordinator",
                      model_fingerprint="sha256:" + hashlib.sha256(
                          "".join(p["manifest_sha256"] for p in provenance).encode()).hexdigest(),
                      config=config, provenance=provenance, seed=seed,
                      overwrite=overwrite) as writer:
        for start in range(0, len(ids), 4096):
            writer.add(ids[start:start + 4096], logits[start:start + 4096])
    return writer.manifest
