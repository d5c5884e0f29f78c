"""fd aggregate: check N bundles against each other and combine them per example."""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..bundle import BundleManifest, BundleWriter, DenseCodec, SparseRows, TopKCodec, read_bundle
from ..bundle.safeio import DEFAULT_LIMITS, Limits
from ..bundle.signing import check_signature
from ..errors import FdError, IncompatibleBundlesError
from ..launch import Ranks, ranks, share
from ..progress import progress_bar
from ..rules import CONFIDENCE_MEASURES, RULES, aggregate_sparse, consensus_distance
from ..rules import sharpen as sharpen_probs
from .parallel import all_sum, finish_parts, part_target
from .private_aggregate import dp_hint, gnmax_settings, guarantee, pate_record
from .streams import Examples, in_step, in_windows

#: about how many bytes the clients' rows take while one batch of examples is combined
#: (the batch shrinks as clients grow, so memory does not grow with them)
WORK_BYTES = 256 << 20

#: a client whose mean distance from the consensus has a robust z-score above this is flagged
#: (benchmarks/poison_table.py: 32 of 36 poisoned clients flagged, 2 of 164 honest ones).
OUTLIER_Z = 2.0


def check_paths(bundles: Sequence[str | Path], out: str | Path) -> None:
    """Refuse a bundle folder given twice, and an output inside an input (it would corrupt
    it) or around one (--overwrite would delete it)."""
    seen: dict[Path, str] = {}
    target = Path(out).resolve()
    for b in bundles:
        real = Path(b).resolve()
        if real in seen:
            raise IncompatibleBundlesError(f"{b}: given twice (also as {seen[real]}); each "
                                           "client's bundle may count only once")
        seen[real] = str(b)
        if target == real or real in target.parents:
            raise FdError(f"{out}: the output would be inside the input bundle {b}, which "
                          "writing it would corrupt; choose an --out outside every input")
        if target in real.parents:
            raise FdError(f"{out}: the output folder holds the input bundle {b}; choose an "
                          "--out that is not a parent of any input")


def check_compatible(readers: Sequence) -> None:
    """Refuse bundles that differ in task, label space or proxy set, and the same bundle or
    the same client twice, naming the bundles."""
    if not readers:
        raise IncompatibleBundlesError("aggregate needs at least one bundle")
    first = readers[0]
    problems = []
    by_digest: dict[str, Path] = {}
    for r in readers:
        if r.manifest_sha256 in by_digest:
            problems.append(f"{r.path}: the same bundle as {by_digest[r.manifest_sha256]} "
                            "(identical manifests); each bundle may count only once")
        by_digest.setdefault(r.manifest_sha256, r.path)
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
                elif field.startswith("label") and first.manifest.task == "embedding":
                    hint = (" (the anchors differ: every client must emit with the same "
                            "--anchors and --seed on the same proxy set)")
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
              sharpen: float | None = None, k: int | None = None, value_dtype: str = "int8",
              seed: int = 0, overwrite: bool = False, progress: bool = True,
              limits: Limits = DEFAULT_LIMITS, trusted_keys: dict | None = None, sign_key=None,
              outlier_z: float = OUTLIER_Z, dp_sigma: float | None = None,
              dp_threshold: float | None = None, dp_threshold_sigma: float | None = None,
              dp_delta: float = 1e-5, dp_seed: int | None = None) -> BundleManifest:
    """Combine bundles per example with ``rule`` (see :mod:`fdcli.rules`) and write the result,
    with a provenance that lists every input, its sha256, its signer and its distance from
    the consensus (``outlier`` marks a client to look at: a robust z-score of its distance
    above ``outlier_z``). ``sharpen`` T applies DS-FL's
    entropy reduction, softmax(p / T), to any rule's result (classification).

    The same bundle twice, a client giving an example twice, and an ``out`` inside (or
    around) an input are refused. With
    ``trusted_keys`` (:func:`fdcli.bundle.signing.load_trusted_keys`) every input must be
    signed by one of them; ``sign_key`` signs the result. ``limits`` bound what reading the
    inputs may cost (:class:`fdcli.bundle.safeio.Limits`).

    Classification bundles become a dense bundle. Token bundles are streamed and combined row
    by row over the union of the clients' kept ids, each client's tail mass spread evenly over
    the ids it did not keep; the result is re-sparsified to the ``k`` most likely ids (topk,
    ``value_dtype``; ``k`` default 16), the rest joining its tail. Embedding (relational)
    bundles are combined the same way, one row per example, keep their anchors as the label
    space, and keep as many anchors per row as the input that kept most, unless ``k`` says
    otherwise.

    Memory does not grow with the number of clients: examples are combined in batches that
    shrink as clients grow (:data:`WORK_BYTES`), and when one decoded shard of every input
    would pass the ``max_held_bytes`` limit, shards are inflated to temporary files and read
    back a batch at a time. Under ``torchrun`` or ``accelerate launch`` each process combines
    a contiguous share of the examples (:func:`example_share`) into a part, the outlier
    tallies are summed over the processes, and process 0 merges the parts into ``out``.

    Rule ``gnmax`` is PATE's differentially private consensus (classification, one
    process): noisy votes with noise ``dp_sigma``; with ``dp_threshold`` (Confident-GNMax)
    only the examples whose noisy top vote (noise ``dp_threshold_sigma``, default twice
    ``dp_sigma``) reaches it are answered, and the others are left out of the teacher. Its
    manifest records the guarantee (:func:`fdcli.dp.pate_guarantee`) and no outlier report,
    which would disclose the clients' votes. The noise is drawn from the operating system's
    randomness unless ``dp_seed`` fixes it (tests)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    if confidence_measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"confidence measure must be one of {CONFIDENCE_MEASURES}")
    if sharpen is not None and not sharpen > 0:
        raise ValueError(f"sharpen must be a positive temperature, got {sharpen}")
    dp = gnmax_settings(rule, dp_sigma, dp_threshold, dp_threshold_sigma, dp_delta, sharpen,
                         dp_seed)
    check_paths(bundles, out)
    readers = [read_bundle(b, limits) for b in bundles]
    check_compatible(readers)
    signers = [check_signature(r.path, r.manifest_bytes, trusted_keys, limits) for r in readers]
    if sharpen is not None and readers[0].manifest.task != "classification":
        raise IncompatibleBundlesError(f"{readers[0].path}: --sharpen applies to "
                                       "classification bundles, not "
                                       f"{readers[0].manifest.task} bundles")
    procs = ranks()
    bounds = example_share(readers, procs)
    params = _rule_params(rule, readers, confidence_measure, tau, era_temperature, trim,
                          prior_correction)
    if dp is not None:
        if readers[0].manifest.task != "classification" or procs.world > 1:
            raise IncompatibleBundlesError(
                "rule 'gnmax' (PATE) combines classification bundles in one process; got "
                f"{readers[0].manifest.task} bundles and {procs.world} process(es)")
        params = {k: dp[k] for k in ("sigma", "threshold", "threshold_sigma", "generator")}
    first = readers[0].manifest
    provenance = [{"path": str(r.path), "client_id": r.manifest.producer.client_id,
                   "manifest_sha256": r.manifest_sha256, "signer": signer,
                   "shards_sha256": [s.sha256 for s in r.manifest.shards],
                   "examples": r.manifest.examples,
                   **({"privacy": guarantee(r)} if guarantee(r) else {})}
                  for r, signer in zip(readers, signers)]
    rounds = [r.manifest.producer.config.get("round") for r in readers]
    config = {"rule": rule, **{k: v for k, v in params.items() if k != "generator"},
              "round": max([x for x in rounds if isinstance(x, int) and x > 0] or [1]),
              "sharpen": sharpen,
              "inputs": [str(b) for b in bundles],
              "coverage": {str(r.path): r.manifest.examples for r in readers}}
    if dp is not None:
        config.update(delta=dp["delta"], noise="fixed by dp_seed (not private)" if dp["seeded"]
                      else "operating system randomness")
    target = part_target(out, procs, config)
    common = dict(proxy_fingerprint=first.proxy_fingerprint, client_id="coordinator",
                  model_fingerprint="sha256:" + hashlib.sha256(
                      "".join(p["manifest_sha256"] for p in provenance).encode()).hexdigest(),
                  provenance=provenance, seed=seed, overwrite=overwrite, sign_key=sign_key)
    run = dict(readers=readers, out=target, rule=rule, params=params, config=config,
               common=common, progress=progress and procs.main, outlier_z=outlier_z,
               bounds=bounds)
    if first.task == "token":
        made = first.producer.config  # how the proxy was tokenized, for the student
        for key in ("task", "max_length", "packing", "text_column", "source_column",
                    "target_column", "max_source_length", "max_target_length", "rows",
                    "prompt_column", "response_column"):
            if key in made or key in ("max_length", "packing", "text_column"):
                config[key] = made.get(key)
        k = 16 if k is None else k
        config.update(k=k, value_dtype=value_dtype)
        combine, extra = _aggregate_sparse, {"codec": TopKCodec(k, value_dtype)}
    elif first.task == "embedding":
        _same_temperature(readers)
        made = first.producer.config  # how the relations were made, for the student
        for key in ("task", "anchors", "anchor_seed", "temperature", "pooling",
                    "input_column"):
            config[key] = made.get(key)
        if k is None:
            k = max(int(r.manifest.encoding.get("k", r.manifest.num_classes)) for r in readers)
        k = min(k, first.num_classes)
        config.update(k=k, value_dtype=value_dtype)
        combine, extra = _aggregate_sparse, {"codec": TopKCodec(k, value_dtype)}
    else:
        combine, extra = _aggregate_classes, {"sharpening": sharpen}
    with _spilling(readers) as spill:
        written = combine(**run, **extra, spill=spill)
    return finish_parts(out, procs, written, overwrite, limits, sign_key)


def example_share(readers, r: Ranks) -> tuple[int, float] | None:
    """The example ids ``[lo, hi)`` that process ``r`` of a launch combines: a contiguous
    share of the examples any bundle holds (read from every bundle's shards); None for one
    process."""
    if r.world == 1:
        return None
    every = torch.empty(0, dtype=torch.int64)
    for reader in readers:
        for info in reader.manifest.shards:
            every = torch.unique(torch.cat([every, reader.load_shard(info).example_ids]))
    mine = share(len(every), r)
    if not mine:
        raise FdError(f"{r.world} processes for {len(every)} examples: process {r.rank} would "
                      "have none; use fewer processes")
    return int(every[mine.start]), (int(every[mine.stop]) if mine.stop < len(every)
                                    else math.inf)


def _spilling(readers):
    """A temporary folder to inflate the inputs' shards into (read back a window of rows at a
    time) when holding one decoded shard of every input would pass the ``max_held_bytes``
    limit; else None (they are held in memory)."""
    held = sum(max((s.raw_bytes for s in r.manifest.shards), default=0) for r in readers)
    if held <= readers[0].limits.max_held_bytes:
        return contextlib.nullcontext(None)
    return tempfile.TemporaryDirectory(prefix="fd-aggregate-")


def _aggregate_classes(readers, out, rule, params, config, common, progress,
                       sharpening, outlier_z, spill, bounds) -> BundleManifest:
    """Stream classification bundles in step, one shard per bundle read at a time (or, with
    ``spill``, inflated there and read back) and decoded a window of rows at a time, and
    combine up to 4,096 examples at a time (fewer as clients grow, :data:`WORK_BYTES`, or
    when the ``max_dense_bytes`` limit asks) into a dense bundle: memory is bounded by the
    shards and the chunk, not by the number of clients times the proxy size. Examples are
    taken a window at a time from every bundle (:func:`.streams.in_windows`), not one by
    one."""
    first = readers[0].manifest
    clients, c = len(readers), first.num_classes
    readers[0].check_dense(1, clients=clients, itemsize=8)  # one example of every client
    # a chunk holds the clients' float64 probabilities and, at the peak, about seven more
    # arrays of that size (the median of the consensus distance: a masked copy, a transposed
    # copy, the sorted values and their int64 indices; the rule's weighted copy; the windows
    # being joined). Measured at 1,000 clients x 20,000 examples: 1,091 MiB peak RSS when
    # three were counted, 940 MiB with eight (10% slower)
    budget = min(readers[0].limits.max_dense_bytes, WORK_BYTES)
    chunk = max(1, min(4096, budget // (8 * clients * c * 8)))
    streams = [Examples(r, decode=True, window=chunk, spill=spill, bounds=bounds)
               for r in readers]
    tally = OutlierTally(clients, outlier_z)
    with BundleWriter(out, codec=DenseCodec(), task="classification",
                      num_classes=c, label_names=first.label_space.get("names"),
                      label_fingerprint=first.label_fingerprint, config=config,
                      **common) as writer, \
            progress_bar(first.examples, "aggregating examples", progress) as advance:
        private, examples, answered = rule == "gnmax", 0, 0
        for ids, probs, present in in_windows(streams, chunk, c):
            combined = RULES[rule](probs, present, **params)
            advance(len(ids))
            if private:  # no outlier report: it would disclose the clients' votes
                keep = ~combined[:, 0].isnan()
                examples, answered = examples + len(ids), answered + int(keep.sum())
                ids, combined = ids[keep], combined[keep]
                if len(ids):
                    writer.add(ids, combined.clamp_min(1e-30).log().float())
                continue
            tally.add(*consensus_distance(probs, present))
            if sharpening is not None:
                combined = sharpen_probs(combined, sharpening)
            writer.add(ids, combined.clamp_min(1e-30).log().float())
        if private:
            pate_record(writer, config, clients, examples, answered)
        else:
            tally.gather(bounds is not None)
            writer.update_provenance(tally.annotate(common["provenance"]))
    return writer.manifest






def _same_temperature(readers) -> None:
    """Refuse relational bundles emitted at different temperatures: their rows would mix two
    scales, and the student learns at one."""
    seen = {}
    for r in readers:
        seen.setdefault(repr(r.manifest.producer.config.get("temperature")), r.path)
    if len(seen) > 1:
        found = ", ".join(f"{t} ({p})" for t, p in seen.items())
        raise IncompatibleBundlesError(f"embedding bundles emitted at different temperatures: "
                                       f"{found}; every client must emit with the same "
                                       "--temperature")


class OutlierTally:
    """Each client's mean distance from the consensus and top-class agreement, accumulated
    over the examples it has (:func:`fdcli.rules.consensus_distance`)."""

    def __init__(self, clients: int, threshold: float = OUTLIER_Z):
        self.threshold = threshold
        self.tv = torch.zeros(clients, dtype=torch.float64)
        self.agree = torch.zeros(clients, dtype=torch.float64)
        self.count = torch.zeros(clients, dtype=torch.float64)

    def add(self, tv: torch.Tensor, agree: torch.Tensor) -> None:
        have = ~torch.isnan(tv)
        self.tv += torch.where(have, tv, 0.0).sum(1)
        self.agree += agree.double().sum(1)
        self.count += have.double().sum(1)

    def gather(self, launched: bool) -> None:
        """Sum the tallies of every process of a launch (each combined its share)."""
        if launched:
            both = all_sum(torch.stack([self.tv, self.agree, self.count]))
            self.tv, self.agree, self.count = both[0], both[1], both[2]

    def report(self) -> list[dict]:
        """Per client: mean total-variation distance from the consensus, top-class agreement,
        a robust z-score of the distance (median and MAD over clients) and ``outlier``."""
        n = self.count.clamp_min(1)
        tv, agree = self.tv / n, self.agree / n
        med = tv.median()
        mad = (tv - med).abs().median() * 1.4826
        # a floor on the spread, so that near-identical honest clients do not flag each other
        z = (tv - med) / max(float(mad), 0.02)
        return [{"distance_from_consensus": round(float(t), 6), "agreement": round(float(a), 6),
                 "robust_z": round(float(zz), 3), "outlier": bool(zz > self.threshold)}
                for t, a, zz in zip(tv, agree, z)]

    def annotate(self, provenance: list[dict]) -> list[dict]:
        return [{**p, **r} for p, r in zip(provenance, self.report())]


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
        missing = [r for r, c in zip(readers, counts) if not isinstance(c, int)]
        if missing:
            raise IncompatibleBundlesError(
                f"rule 'weighted' needs each bundle to declare its client's train_examples; "
                f"missing in {[str(r.path) for r in missing]}" + dp_hint(missing[0]))
        negative = [str(r.path) for r, c in zip(readers, counts) if c < 0]
        if negative:
            raise IncompatibleBundlesError(f"rule 'weighted': producer.config.train_examples is "
                                           f"negative in {negative}")
        if not any(counts):
            raise IncompatibleBundlesError("rule 'weighted': every bundle declares 0 "
                                           "train_examples; there is nothing to weight by")
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
                            "missing; the client must emit with --declare-label-counts"
                            + dp_hint(r))
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


def _aggregate_sparse(readers, out, rule, params, codec, config, common,
                      progress, outlier_z, spill, bounds) -> BundleManifest:
    """Stream token (or embedding) bundles in step, example by example, combining up to
    4,096 rows at a time (fewer as clients grow: :func:`_batch_rows`) over the union of the
    clients' kept ids (:func:`fdcli.rules.aggregate_sparse`). With ``spill``, each input's
    shards are inflated there and read back a batch of rows at a time."""
    first = readers[0].manifest
    for r in readers:
        if r.codec.shared_tensors:
            usable = "topk or sample" if first.task == "token" else "topk or dense"
            raise IncompatibleBundlesError(f"{r.path}: a {r.codec.name!r} bundle cannot be "
                                           f"streamed; emit {first.task} bundles as {usable}")
    batch = _batch_rows(readers)
    streams = [Examples(r, window=batch, spill=spill, bounds=bounds) for r in readers]
    v = first.num_classes
    tally = OutlierTally(len(readers), outlier_z)
    names = first.label_space.get("names") if first.task == "embedding" else None
    with BundleWriter(out, codec=codec, task=first.task, num_classes=v, label_names=names,
                      label_fingerprint=first.label_fingerprint, config=config,
                      **common) as writer, \
            progress_bar(first.rows, f"aggregating {first.task} rows", progress) as advance:
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
            distances: list = []
            combined = aggregate_sparse(clients, present, rule, distances=distances, **params)
            tally.add(*distances[0])
            writer.add_sparse([e for e, _, _ in pending], combined,
                              row_counts=counts if first.task == "token" else None)
            advance(total)
            pending.clear()

        rows = 0
        for e, n_rows, parts in in_step(streams):
            pending.append((e, n_rows, parts))
            rows += n_rows
            if rows >= batch:
                flush()
                rows = 0
        if pending:
            flush()
        tally.gather(bounds is not None)
        writer.update_provenance(tally.annotate(common["provenance"]))
    return writer.manifest


def _batch_rows(readers) -> int:
    """How many rows to combine at once: 4,096, or fewer where every client's rows of them
    (each row's ids gathered, sorted and spread over the union: about 16 times its decoded
    bytes) would take more than :data:`WORK_BYTES`."""
    row_bytes = max((s.raw_bytes / max(s.rows, 1) for r in readers for s in r.manifest.shards),
                    default=1.0)
    return max(1, min(4096, int(WORK_BYTES // (len(readers) * 16 * max(row_bytes, 1.0)))))


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
