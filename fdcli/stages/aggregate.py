"""fd aggregate: check N bundles against each other and combine them per example."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

import torch

from ..bundle import BundleManifest, BundleWriter, DenseCodec, SparseRows, TopKCodec, read_bundle
from ..errors import IncompatibleBundlesError
from ..progress import progress_bar
from ..rules import CONFIDENCE_MEASURES, RULES, aggregate_sparse
from ..rules import sharpen as sharpen_probs


def manifest_digest(path: Path) -> str:
    """The sha256 of a bundle's manifest.json, which lists every shard's sha256: it pins the
    whole bundle."""
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
                if field.startswith("label") and first.manifest.task == "token":
                    hint = (f" (the tokenizers differ: {r.manifest.num_classes} vs "
                            f"{first.manifest.num_classes} ids; every teacher must use the "
                            "federation's tokenizer, while architectures may differ)")
                elif field.startswith("label"):
                    hint = (f" (labels {r.manifest.label_space.get('names')} vs "
                            f"{first.manifest.label_space.get('names')})")
                elif field.startswith("proxy") and first.manifest.task == "token":
                    hint = (" (it was emitted on different proxy text, or with another tokenizer,"
                            " --max-length or packing)")
                elif field.startswith("proxy"):
                    hint = " (it was emitted on a different proxy dataset)"
                problems.append(f"{r.path}: {field} is {b!r}, but {first.path} has {a!r}{hint}")
    if problems:
        raise IncompatibleBundlesError.collected("bundles", problems)


def aggregate(bundles: Sequence[str | Path], out: str | Path, *, rule: str = "confidence",
              confidence_measure: str = "max", tau: float = 1.0, era_temperature: float = 0.1,
              trim: float = 0.2, prior_correction: bool = True,
              sharpen: float | None = None, k: int = 16, value_dtype: str = "int8", seed: int = 0,
              overwrite: bool = False, progress: bool = True) -> BundleManifest:
    """Combine bundles per example with ``rule`` (see :mod:`fdcli.rules`) and write the result,
    with a provenance that lists every input and its sha256. ``sharpen`` T applies DS-FL's
    entropy reduction, softmax(p / T), to any rule's result (classification).

    Classification bundles become a dense bundle. Token bundles are streamed and combined row
    by row over the union of the clients' kept ids, each client's tail mass spread evenly over
    the ids it did not keep; the result is re-sparsified to the ``k`` most likely ids (topk,
    ``value_dtype``), the rest joining its tail."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    if confidence_measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"confidence measure must be one of {CONFIDENCE_MEASURES}")
    if sharpen is not None and not sharpen > 0:
        raise ValueError(f"sharpen must be a positive temperature, got {sharpen}")
    readers = [read_bundle(b) for b in bundles]
    check_compatible(readers)
    if sharpen is not None and readers[0].manifest.task != "classification":
        raise IncompatibleBundlesError(f"{readers[0].path}: --sharpen applies to "
                                       "classification bundles, not token bundles")
    params = _rule_params(rule, readers, confidence_measure, tau, era_temperature, trim,
                          prior_correction)
    first = readers[0].manifest
    provenance = [{"path": str(r.path), "client_id": r.manifest.producer.client_id,
                   "manifest_sha256": manifest_digest(r.path),
                   "shards_sha256": [s.sha256 for s in r.manifest.shards],
                   "examples": r.manifest.examples} for r in readers]
    rounds = [r.manifest.producer.config.get("round") for r in readers]
    config = {"rule": rule, **params,
              "round": max([x for x in rounds if isinstance(x, int) and x > 0] or [1]),
              "sharpen": sharpen,
              "inputs": [str(b) for b in bundles],
              "coverage": {str(r.path): r.manifest.examples for r in readers}}
    common = dict(proxy_fingerprint=first.proxy_fingerprint, client_id="coordinator",
                  model_fingerprint="sha256:" + hashlib.sha256(
                      "".join(p["manifest_sha256"] for p in provenance).encode()).hexdigest(),
                  provenance=provenance, seed=seed, overwrite=overwrite)
    if first.task == "token":
        for key in ("max_length", "packing", "text_column"):  # how the proxy was tokenized
            config[key] = first.producer.config.get(key)
        config.update(k=k, value_dtype=value_dtype)
        return _aggregate_tokens(readers, out, rule, params, TopKCodec(k, value_dtype),
                                 config, common, progress)
    return _aggregate_classes(readers, out, rule, params, config, common, progress, sharpen)


def _aggregate_classes(readers, out, rule, params, config, common, progress,
                       sharpening) -> BundleManifest:
    """Stream classification bundles in step, one shard per bundle decoded at a time, and
    combine up to 4,096 examples at a time into a dense bundle: memory is bounded by the
    shards and the chunk, not by the number of clients times the proxy size."""
    first = readers[0].manifest
    streams = [_Examples(r, decode=True) for r in readers]
    with BundleWriter(out, codec=DenseCodec(), task="classification",
                      num_classes=first.num_classes, label_names=first.label_space.get("names"),
                      label_fingerprint=first.label_fingerprint, config=config,
                      **common) as writer, \
            progress_bar(first.examples, "aggregating examples", progress) as advance:
        pending: list[tuple[int, int, list]] = []

        def flush() -> None:
            probs = torch.zeros(len(readers), len(pending), first.num_classes,
                                dtype=torch.float64)
            present = torch.zeros(len(readers), len(pending), dtype=torch.bool)
            for i, (_, _, parts) in enumerate(pending):
                for k, part in enumerate(parts):
                    if part is not None:
                        probs[k, i] = part["logp"][0].double().exp()
                        present[k, i] = True
            combined = RULES[rule](probs, present, **params)
            if sharpening is not None:
                combined = sharpen_probs(combined, sharpening)
            writer.add(torch.tensor([e for e, _, _ in pending]),
                       combined.clamp_min(1e-30).log().float())
            advance(len(pending))
            pending.clear()

        for item in _in_step(streams):
            pending.append(item)
            if len(pending) >= 4096:
                flush()
        if pending:
            flush()
    return writer.manifest


def _rule_params(rule, readers, confidence_measure, tau, era_temperature, trim,
                 prior_correction):
    if rule == "confidence":
        return {"measure": confidence_measure, "tau": tau}
    if rule == "entropy-reduction":
        return {"temperature": era_temperature}
    if rule == "trimmed-mean":
        return {"trim": trim}
    if rule == "weighted":
        counts = [r.manifest.producer.config.get("train_examples") for r in readers]
        missing = [str(r.path) for r, c in zip(readers, counts) if not isinstance(c, int)]
        if missing:
            raise IncompatibleBundlesError(f"rule 'weighted' needs each bundle to declare its "
                                           f"client's train_examples; missing in {missing}")
        return {"counts": counts}
    if rule == "coverage":
        return {"counts": _label_counts(readers), "prior_correction": prior_correction}
    return {}


def _label_counts(readers) -> list[list[int]]:
    """Each bundle's declared training label counts, in the label space's order."""
    first = readers[0].manifest
    if first.task != "classification":
        raise IncompatibleBundlesError(f"{readers[0].path}: rule 'coverage' weights clients by "
                                       f"their label counts, which a {first.task!r} bundle "
                                       "does not have; use another rule")
    names = first.label_space.get("names") or []
    counts, problems = [], []
    for r in readers:
        hist = r.manifest.producer.config.get("label_histogram")
        if not isinstance(hist, dict):
            problems.append(f"{r.path}: manifest.json producer.config.label_histogram is "
                            "missing; the client must emit with --declare-label-counts")
            continue
        bad = [n for n in names if not isinstance(hist.get(n), int) or hist[n] < 0] + \
            [str(n) for n in hist if n not in names]
        if bad:
            problems.append(f"{r.path}: producer.config.label_histogram must give a "
                            f"non-negative count for each of the labels {names}; wrong or "
                            f"unknown: {bad[:5]}")
            continue
        counts.append([hist[n] for n in names])
    if problems:
        raise IncompatibleBundlesError.collected("bundles (rule 'coverage')", problems)
    if not any(sum(c) for c in counts):
        raise IncompatibleBundlesError("rule 'coverage': every bundle declares zero training "
                                       "examples; there is nothing to weight by")
    return counts


class _Examples:
    """One bundle's examples in file order, one at a time, checking that ids increase."""

    def __init__(self, reader, decode: bool = False):
        self.reader, self.blocks, self.decode = reader, reader.iter_blocks(), decode
        self.block, self.i, self.last, self.logp = None, 0, -1, None
        self._advance()

    def _advance(self) -> None:
        while self.block is None or self.i >= len(self.block.example_ids):
            self.block, self.i = next(self.blocks, None), 0
            if self.block is None:
                return
            if self.decode:  # whole shard at once (low-rank factors are per shard)
                self.logp = self.block.dense()

    @property
    def current(self) -> int | None:
        return None if self.block is None else int(self.block.example_ids[self.i])

    def pop(self) -> tuple[int, dict[str, torch.Tensor]]:
        b, i = self.block, self.i
        e = int(b.example_ids[i])
        if e <= self.last:
            raise IncompatibleBundlesError(
                f"{self.reader.path}: example ids do not increase through the bundle ({e} after "
                f"{self.last}); bundles are aggregated in one streaming pass, so re-emit it "
                "with fd emit-logits")
        self.last = e
        a, z = int(b.row_offsets[i]), int(b.row_offsets[i + 1])
        part = {"logp": self.logp[a:z]} if self.decode else \
            {k: v[a:z] for k, v in b.tensors.items()}
        self.i += 1
        self._advance()
        return z - a, part


def _in_step(streams: Sequence[_Examples]):
    """The bundles' examples in increasing id order: ``(id, rows, parts)`` where
    ``parts[k]`` is bundle k's rows of that example, or None where it lacks it."""
    while True:
        current = [s.current for s in streams]
        live = [c for c in current if c is not None]
        if not live:
            return
        e = min(live)
        parts, n_rows, source = [], None, None
        for s, c in zip(streams, current):
            if c != e:
                parts.append(None)
                continue
            n, part = s.pop()
            if n_rows is not None and n != n_rows:
                raise IncompatibleBundlesError(
                    f"{s.reader.path}: example {e} has {n} token rows, but {source} has "
                    f"{n_rows}; the bundles tokenized the proxy differently")
            n_rows, source = n, s.reader.path
            parts.append(part)
        yield e, n_rows, parts


def _aggregate_tokens(readers, out, rule, params, codec, config, common,
                      progress) -> BundleManifest:
    """Stream token bundles in step, example by example, combining a few thousand rows at a
    time over the union of the clients' kept ids (:func:`fdcli.rules.aggregate_sparse`)."""
    first = readers[0].manifest
    for r in readers:
        if r.codec.shared_tensors:
            raise IncompatibleBundlesError(f"{r.path}: a {r.codec.name!r} bundle cannot be "
                                           "streamed; emit token bundles as topk or sample")
    streams = [_Examples(r) for r in readers]
    v = first.num_classes
    with BundleWriter(out, codec=codec, task="token", num_classes=v,
                      label_fingerprint=first.label_fingerprint, config=config,
                      **common) as writer, \
            progress_bar(first.rows, "aggregating token rows", progress) as advance:
        pending: list[tuple[int, int, list]] = []

        def flush() -> None:
            counts = torch.tensor([n for _, n, _ in pending])
            total = int(counts.sum())
            clients, present = [], torch.zeros(len(readers), total, dtype=torch.bool)
            for k, r in enumerate(readers):
                parts = [parts_k[k] for _, _, parts_k in pending]
                have = [p is not None for p in parts]
                rows_k = torch.cat([torch.full((n,), h) for (_, n, _), h in zip(pending, have)])
                present[k] = rows_k
                got = [p for p in parts if p is not None]
                sp = None
                if got:
                    joined = {name: torch.cat([p[name] for p in got]) for name in got[0]}
                    sp = r.codec.sparse_at(joined, v, 1.0)
                clients.append(_scatter_rows(sp, rows_k, v))
            combined = aggregate_sparse(clients, present, rule, **params)
            writer.add_sparse([e for e, _, _ in pending], combined, row_counts=counts)
            advance(total)
            pending.clear()

        rows = 0
        for e, n_rows, parts in _in_step(streams):
            pending.append((e, n_rows, parts))
            rows += n_rows
            if rows >= 4096:
                flush()
                rows = 0
        if pending:
            flush()
    return writer.manifest


def _scatter_rows(sp: SparseRows | None, rows: torch.Tensor, v: int) -> SparseRows:
    """Client rows placed at the batch positions where ``rows`` is true; other positions
    hold an empty placeholder (all mass in the tail), which the rules never read."""
    width = 1 if sp is None else sp.ids.shape[1]
    n = len(rows)
    ids = torch.zeros(n, width, dtype=torch.int64)
    logp = torch.full((n, width), -math.inf)
    tail = torch.zeros(n)
    if sp is not None:
        ids[rows], logp[rows], tail[rows] = sp.ids.long(), sp.logp, sp.tail_logp
    return SparseRows(ids, logp, tail, v)
