"""Streaming, atomic bundle writer.

Rows are encoded as they arrive and written to shards of bounded size; an example's rows never
span two shards. Everything is written into a hidden temporary folder next to the target,
each file fsynced, the manifest last, and the folder is renamed into place only on
:meth:`BundleWriter.close`. A bundle that is not complete never appears under its name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import FdError
from ..outputs import (check_free, claim_sibling, fsync_dir, make_parents, move_into_place,
                       remove_created, stale_siblings, temporary_sibling)
from .codecs import Codec
from .journal import JOURNAL, Checkpoint, Resumed, append_line, load_partial, resume_key, tidy
from .manifest import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, TASKS, BundleManifest,
                       Producer, ShardInfo, fingerprint_labels)
from .shards import ZSTD_LEVEL, encode_shard, sha256_bytes, write_file_atomic
from .sparse import SparseRows, concat_rows, kl_rows, log_softmax_rows

#: fidelity statistics are measured on at most this many evenly spaced rows of each batch.
FIDELITY_ROWS = 256
#: a batch is encoded this many logits (rows x classes) at a time on a GPU, to bound the
#: encoders' temporaries (the sample encoder's [rows, draws, SAMPLE_BLOCK] gathers among them),
#: and on a CPU, where small chunks stay in cache (measured 2x faster for log-sum-exp)
ENCODE_ELEMENTS = {"cuda": 1 << 27, "cpu": 1 << 21}
#: shards compressed and written in the background at once, besides the one being filled
SHARD_WORKERS = 2
_FIDELITY_KEYS = ("tail_mass", "kl", "truncation_kl")


def _fidelity_rows(rows: int, device=None) -> torch.Tensor:
    return torch.arange(0, rows, max(1, math.ceil(rows / FIDELITY_ROWS)), device=device)


def _sparse_kl(exact: SparseRows, stored: SparseRows) -> torch.Tensor:
    """KL(exact || stored) per row when the stored ids are a subset of the exact listed ids and
    every other id is in the tail bucket of both (both spread their tails evenly)."""
    dense_e = torch.cat([exact.logp, exact.tail_logp[:, None]], -1)
    at = torch.full_like(exact.logp, -math.inf)
    ids_e, ids_s = exact.ids.long(), stored.ids.long()
    if ids_s.shape[1] and bool((ids_s[:, 1:] > ids_s[:, :-1]).all()):
        # ids ascending (as topk stores them): a search, not [rows, exact ids, stored ids]
        pos = torch.searchsorted(ids_s, ids_e).clamp(max=ids_s.shape[1] - 1)
        hit = (ids_s.gather(1, pos) == ids_e) & torch.isfinite(exact.logp)
    else:
        match = ids_e[:, :, None] == ids_s[:, None, :]
        hit = match.any(-1) & torch.isfinite(exact.logp)
        pos = match.float().argmax(-1)
    at = torch.where(hit, stored.logp.gather(1, pos), at)
    # an exact listed id that was dropped now lives in the stored tail, shared evenly
    others = (exact.num_classes - torch.isfinite(stored.logp).sum(-1)).clamp(min=1).float()
    share = stored.tail_logp - others.log()
    at = torch.where(hit, at, share[:, None].expand_as(at))
    tail_count = (exact.num_classes - torch.isfinite(exact.logp).sum(-1)).float()
    q_tail = share + tail_count.clamp(min=1).log()
    return kl_rows(dense_e, torch.cat([at, q_tail[:, None]], -1))

#: shards are cut at this many uncompressed bytes: small enough that compressing the last one
#: (the part of an emit that cannot overlap the model) is short, large enough that a billion
#: top-16 tokens fit in about 2,300 shards
DEFAULT_SHARD_BYTES = 16 << 20


class BundleWriter:
    """Write a logit bundle, one batch of examples at a time.

    >>> with BundleWriter("out/bundle", codec=TopKCodec(k=16), task="token", num_classes=50257,
    ...                   label_fingerprint=vocab_fp, proxy_fingerprint=proxy_fp,
    ...                   client_id="hospital-a", model_fingerprint=model_fp) as w:
    ...     w.add(example_ids, logits, row_counts=tokens_per_example)
    >>> w.manifest.rows

    ``logits`` are raw model outputs ``[rows, num_classes]`` in any float dtype, on any
    device. ``row_counts`` (token tasks only) gives how many of those rows belong to each
    example, in order. Leaving the ``with`` block by an exception discards everything written.

    Row-wise codecs encode on the logits' device; on a GPU only the compact tensors are copied
    back, asynchronously, and a batch is finished on the host while the next one is computed
    (a batch's problems, such as NaN logits, are raised by the next :meth:`add` or by
    :meth:`close`). Shards are compressed and written by ``SHARD_WORKERS`` background threads;
    the first failure fails the next call. Random codecs (``sample``) draw each batch from a
    generator seeded by ``seed`` and the batch's first example id, so the same batches give
    the same bundle rows in any process.

    Every complete shard is recorded in a journal (:mod:`.journal`). With ``resume``, a
    folder that an earlier writer of the same bundle with the same settings left behind
    (killed, or interrupted with Ctrl-C) is checked and reused: :attr:`resume_after` is then
    the last example id of the batches to skip (the caller starts its batches after it),
    :attr:`resume_note` says what was found, and the finished bundle equals an uninterrupted
    one (its creation time too). Row-wise codecs only.
    """

    def __init__(self, path: str | os.PathLike, *, codec: Codec, task: str, num_classes: int,
                 proxy_fingerprint: str, client_id: str, model_fingerprint: str,
                 label_names: Sequence[str] | None = None, label_fingerprint: str | None = None,
                 config: dict[str, Any] | None = None, provenance: list[dict] | None = None,
                 seed: int = 0, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 max_shard_rows: int | None = None, overwrite: bool = False,
                 zstd_level: int = ZSTD_LEVEL, created: str | None = None,
                 fd_version: str | None = None, sign_key=None, resume: bool = False):
        from .. import __version__

        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if label_names is not None:
            label_names = [str(n) for n in label_names]
            if len(label_names) != num_classes:
                raise ValueError(f"{len(label_names)} label names for {num_classes} classes")
            label_fingerprint = label_fingerprint or fingerprint_labels(label_names)
        if label_fingerprint is None:
            raise ValueError("give label_names or label_fingerprint")
        self.path = Path(path)
        check_free(self.path, overwrite)
        self.overwrite = overwrite
        self.codec, self.task, self.num_classes = codec, task, int(num_classes)
        self.max_shard_bytes, self.max_shard_rows = max_shard_bytes, max_shard_rows
        self.zstd_level = zstd_level
        self.sign_key = sign_key
        self.seed = seed
        label_space: dict[str, Any] = {"fingerprint": label_fingerprint}
        if label_names is not None:
            label_space["names"] = label_names
        self._manifest = BundleManifest(
            task=task, encoding={"name": codec.name, **codec.params()},
            num_classes=self.num_classes, label_space=label_space,
            proxy={"fingerprint": proxy_fingerprint},
            producer=Producer(
                client_id=client_id, model_fingerprint=model_fingerprint,
                fd_version=fd_version or __version__,
                created=created or _dt.datetime.now(_dt.timezone.utc).isoformat(
                    timespec="seconds"),
                config={"seed": seed, **(config or {})}),
            rows=0, examples=0, shards=[], fidelity={}, provenance=list(provenance or []))
        settings = self._manifest.to_dict()
        del settings["producer"]["created"]
        self._key = resume_key({"manifest": settings, "max_shard_bytes": max_shard_bytes,
                                "max_shard_rows": max_shard_rows, "zstd_level": zstd_level})
        if resume and not codec.row_wise:
            raise ValueError(f"the {codec.name!r} encoding cannot resume (it encodes whole "
                             "shards, not rows)")
        self._created = make_parents(self.path)
        self.resume_note = ""
        resumed = self._claim() if resume else None
        self._tmp = resumed.folder if resumed else temporary_sibling(self.path)
        self._pending: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
        self._pending_rows = 0
        self._row_bytes: float | None = None
        self._sums = {"tail_mass": 0.0, "kl": 0.0, "truncation_kl": 0.0}
        self._has_truncation = False
        self._counted = 0  # rows the fidelity sums cover
        self._inflight: deque = deque()  # batches still being copied from the device
        self._pool: ThreadPoolExecutor | None = None
        self._writes: deque[Future] = deque()  # shard writes, in shard order
        self._next_shard = 0
        self.manifest: BundleManifest | None = None
        # resuming: batches up to this example id are skipped by the caller, rows up to
        # _written_through are dropped (they are in the kept shards)
        self.resume_after: int | None = None
        self._written_through = -1
        self._checkpoints: deque[Checkpoint] = deque([self._checkpoint(-1)])
        self._shard_last: dict[int, int] = {}
        if resumed is not None:
            self._restore(resumed)

    # -- resuming ------------------------------------------------------------------------
    def _claim(self) -> Resumed | None:
        """The newest partial folder of this bundle that a writer with the same settings
        left, renamed to this writer's temporary name; ``None`` if there is none."""
        reasons = []
        for stale in stale_siblings(self.path, own=True):
            found, why = load_partial(stale, self._key)
            if found is None:
                reasons.append(f"{stale.name}: {why}")
                continue
            found.folder = claim_sibling(self.path, stale)
            tidy(found)
            return found
        self.resume_note = ("no interrupted emit of this bundle to resume"
                            + (f" ({'; '.join(reasons)})" if reasons else "")
                            + "; starting from the first example")
        return None

    def _restore(self, r: Resumed) -> None:
        m = self._manifest
        m.shards = list(r.shards)
        m.rows = sum(s.rows for s in r.shards)
        m.examples = sum(s.examples for s in r.shards)
        m.producer.created = r.created
        self._next_shard = len(r.shards)
        self._row_bytes = r.row_bytes
        c = r.checkpoint
        self._sums, self._counted, self._has_truncation = dict(c.sums), c.counted, c.truncation
        self._checkpoints = deque([c])
        self.resume_after, self._written_through = c.after, r.written_through
        self.resume_note = (f"resuming after {len(r.shards)} complete shard(s), "
                            f"{m.examples} example(s), {m.rows} row(s)")

    def _checkpoint(self, after: int) -> Checkpoint:
        return Checkpoint(after=after, sums=dict(self._sums), counted=self._counted,
                          truncation=self._has_truncation)

    # -- adding rows ---------------------------------------------------------------------
    def add(self, example_ids, logits: torch.Tensor, row_counts=None) -> None:
        """Encode and buffer a batch of whole examples; full shards are written at once."""
        if self.manifest is not None:
            raise RuntimeError("this BundleWriter is closed")
        ids = torch.as_tensor(example_ids, dtype=torch.int64).reshape(-1)
        logits = torch.as_tensor(logits).detach()
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [rows, {self.num_classes}], got "
                             f"{list(logits.shape)}")
        counts = self._row_counts(ids, row_counts, logits.shape[0])
        if self.codec.row_wise:
            self._stage(ids, counts, logits)
        else:
            self._check_finite((~torch.isfinite(logits.float().amax(-1))).sum())
            logp, lse = log_softmax_rows(logits.cpu())
            self._buffer(ids, counts, {"logp": logp, "lse": lse})

    def _check_finite(self, bad: torch.Tensor) -> None:
        # amax propagates NaN, so one pass finds NaN, +Inf and rows with no finite logit
        if int(bad):
            raise FdError(f"{self.path}: the model produced NaN or infinite logits, or rows with"
                          " no finite logit; refusing to write them")

    def _generator(self, ids: torch.Tensor, device: torch.device) -> torch.Generator | None:
        if not self.codec.random:
            return None
        first = int(ids[0]) if len(ids) else -1
        digest = hashlib.sha256(f"{self.seed}:{first}".encode()).digest()
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little")
                                                          >> 1)

    def _stage(self, ids, counts, logits) -> None:
        """Encode a batch where its logits are and start copying the result to the host."""
        dev, rows = logits.device, logits.shape[0]
        gen = self._generator(ids, dev)
        step = ENCODE_ELEMENTS.get(dev.type, ENCODE_ELEMENTS["cpu"]) // max(self.num_classes, 1)
        parts = [self.codec.encode_logits(chunk, self.num_classes, gen)
                 for chunk in (logits.split(max(1, step)) or (logits,))]
        tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "_bad"}
        sample = _fidelity_rows(rows, dev)
        fid = self.codec.fidelity(torch.log_softmax(logits[sample].float(), -1),
                                  {k: v[sample] for k, v in tensors.items()}, self.num_classes)
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        tensors["_fidelity"] = torch.stack([fid[k].double().sum() if k in fid else zero
                                            for k in _FIDELITY_KEYS])
        # rows with a NaN, +inf or no finite logit: the GPU encoders count them as they read
        # the logits; otherwise one amax pass finds them (amax propagates NaN)
        if "_bad" in parts[0]:
            tensors["_bad"] = sum(p["_bad"] for p in parts)
        else:
            tensors["_bad"] = (~torch.isfinite(logits.amax(-1))).sum() if rows else zero
        event = None
        if dev.type == "cuda":
            tensors = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                       .copy_(v, non_blocking=True) for k, v in tensors.items()}
            event = torch.cuda.Event()
            event.record()
        self._inflight.append((ids, counts, tensors, event, len(sample),
                               "truncation_kl" in fid))
        while len(self._inflight) > (1 if event is not None else 0):
            self._land(*self._inflight.popleft())

    def _land(self, ids, counts, tensors, event, sampled: int, truncation: bool) -> None:
        """Finish a staged batch on the host once its copy is complete."""
        if event is not None:
            event.synchronize()
            # copies out of the pinned staging memory, which the next batches then reuse
            tensors = {k: v.clone() for k, v in tensors.items()}
        self._check_finite(tensors.pop("_bad"))
        for key, value in zip(_FIDELITY_KEYS, tensors.pop("_fidelity").tolist()):
            self._sums[key] += value
        self._counted += sampled
        self._has_truncation |= truncation
        if len(ids):
            self._checkpoints.append(self._checkpoint(int(ids[-1])))
        self._buffer(ids, counts, self.codec.finish(tensors, self.num_classes))

    def add_sparse(self, example_ids, rows: SparseRows, row_counts=None) -> None:
        """Encode and buffer rows that are already sparse distributions (an aggregated
        teacher); the codec needs an ``encode_sparse`` method (topk has one)."""
        if self.manifest is not None:
            raise RuntimeError("this BundleWriter is closed")
        if not hasattr(self.codec, "encode_sparse"):
            raise ValueError(f"the {self.codec.name!r} encoding cannot store sparse rows")
        ids = torch.as_tensor(example_ids, dtype=torch.int64).reshape(-1)
        counts = self._row_counts(ids, row_counts, rows.ids.shape[0])
        tensors = self.codec.encode_sparse(rows)
        stored = self.codec.sparse(tensors, self.num_classes)
        for key, val in {"tail_mass": stored.tail_logp.exp(),
                         "kl": _sparse_kl(rows, stored)}.items():
            self._sums[key] += float(val.double().sum())
        self._counted += rows.ids.shape[0]
        if len(ids):
            self._checkpoints.append(self._checkpoint(int(ids[-1])))
        self._buffer(ids, counts, tensors)

    def _row_counts(self, ids, row_counts, rows: int) -> torch.Tensor:
        if self.task != "token":
            if row_counts is not None and any(int(c) != 1 for c in row_counts):
                raise ValueError(f"{self.task} bundles hold exactly one row per example")
            counts = torch.ones(len(ids), dtype=torch.int64)
        else:
            if row_counts is None:
                raise ValueError("token bundles need row_counts: how many rows each example has")
            counts = torch.as_tensor(row_counts, dtype=torch.int64).reshape(-1)
        if len(counts) != len(ids) or int(counts.sum()) != rows:
            raise ValueError(f"{len(ids)} example ids with {int(counts.sum())} rows in row_counts"
                             f" do not match {rows} rows of logits")
        if bool((counts < 0).any()) or bool((ids < 0).any()):
            raise ValueError("example ids and row counts must be non-negative")
        return counts

    def _buffer(self, ids, counts, tensors) -> None:
        if len(ids) and int(ids[0]) <= self._written_through:  # resuming: already written
            keep = ids > self._written_through
            row_keep = torch.repeat_interleave(keep, counts)
            ids, counts = ids[keep], counts[keep]
            tensors = {k: v[row_keep] for k, v in tensors.items()}
        rows = int(counts.sum())
        if self._row_bytes is None and rows:
            self._row_bytes = sum(t.numel() * t.element_size()
                                  for t in tensors.values()) / rows
        self._pending.append((ids, counts, tensors))
        self._pending_rows += rows
        while self._pending_rows >= self._shard_rows():
            self._flush(full_only=True)

    def _shard_rows(self) -> int:
        by_bytes = max(1, int(self.max_shard_bytes // max(self._row_bytes or 1.0, 1.0)))
        return min(by_bytes, self.max_shard_rows or by_bytes)

    def _account(self, logp, tensors) -> None:
        fid = self.codec.fidelity(logp, tensors, self.num_classes)
        self._counted += logp.shape[0]
        for key, val in fid.items():
            self._sums[key] += float(val.double().sum())
        self._has_truncation |= "truncation_kl" in fid

    def _flush(self, full_only: bool) -> None:
        ids = torch.cat([p[0] for p in self._pending])
        counts = torch.cat([p[1] for p in self._pending])
        tensors = concat_rows([p[2] for p in self._pending])
        ends = counts.cumsum(0)
        limit = self._shard_rows()
        # cut after the last example that still fits (at least one example per shard)
        n_ex = max(1, int((ends <= limit).sum())) if full_only else len(ids)
        n_rows = int(ends[n_ex - 1]) if n_ex else 0
        self._write_shard(ids[:n_ex], counts[:n_ex], {k: v[:n_rows] for k, v in tensors.items()})
        self._pending = []
        if n_ex < len(ids):
            self._pending = [(ids[n_ex:], counts[n_ex:],
                              {k: v[n_rows:] for k, v in tensors.items()})]
        self._pending_rows = int(counts[n_ex:].sum())

    def _write_shard(self, ids, counts, tensors) -> None:
        if not self.codec.row_wise:
            logp = tensors["logp"]
            tensors = self.codec.encode(logp, tensors["lse"], self.num_classes)
            self._account(logp, tensors)
        rows = int(counts.sum())
        out = {"example_ids": ids.contiguous()}
        if self.task == "token":
            out["row_offsets"] = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        out.update(tensors)
        index = self._next_shard
        self._next_shard += 1
        self._shard_last[index] = int(ids[-1])
        name = f"shard-{index:05d}.safetensors.zst"
        m = self._manifest
        meta = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "task": m.task,
                "encoding": json.dumps(m.encoding, sort_keys=True),
                "num_classes": str(m.num_classes), "label_fingerprint": m.label_fingerprint,
                "proxy_fingerprint": m.proxy_fingerprint, "client_id": m.producer.client_id,
                "shard_index": str(index), "rows": str(rows), "examples": str(len(ids))}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(SHARD_WORKERS, thread_name_prefix="fd-shard")
        self._writes.append(self._pool.submit(self._encode_write, name, out, meta, rows,
                                              len(ids)))
        m.rows += rows
        m.examples += len(ids)
        self._collect(SHARD_WORKERS)

    def _encode_write(self, name, tensors, meta, rows: int, examples: int) -> ShardInfo:
        data, raw_size = encode_shard(tensors, meta, self.zstd_level)
        write_file_atomic(self._tmp / name, data)
        return ShardInfo(file=name, sha256=sha256_bytes(data), rows=rows, examples=examples,
                         bytes=len(data), raw_bytes=raw_size)

    def _collect(self, keep: int) -> None:
        """Record finished shard writes in order, waiting while more than ``keep`` are
        queued; a failed write raises here."""
        while self._writes and (len(self._writes) > keep or self._writes[0].done()):
            info = self._writes.popleft().result()
            self._manifest.shards.append(info)
            self._journal(len(self._manifest.shards) - 1, info)

    def _journal(self, index: int, info: ShardInfo) -> None:
        """Record shard ``index`` with the state after the last batch wholly within it and
        the shards before (where a resumed writer goes on)."""
        last = self._shard_last.pop(index)
        while len(self._checkpoints) > 1 and self._checkpoints[1].after <= last:
            self._checkpoints.popleft()
        append_line(self._tmp, self._key, self._manifest.producer.created, self._row_bytes or 0.0,
                    info, last, self._checkpoints[0])

    def update_config(self, **fields) -> None:
        """Add ``fields`` to the producer's config the manifest will record (before
        :meth:`close`): what is known only once every row is written."""
        if self.manifest is not None:
            raise RuntimeError("this BundleWriter is closed")
        self._manifest.producer.config.update(fields)

    def update_provenance(self, entries: list[dict]) -> None:
        """Replace the provenance the manifest will record (before :meth:`close`)."""
        if self.manifest is not None:
            raise RuntimeError("this BundleWriter is closed")
        self._manifest.provenance = list(entries)

    # -- finishing -----------------------------------------------------------------------
    def close(self) -> BundleManifest:
        """Write the last shard and the manifest, then move the bundle into place. On any
        error, everything written so far is discarded."""
        if self.manifest is None:
            try:
                self.manifest = self._finish()
            except BaseException as exc:
                self.abort(keep_partial=isinstance(exc, KeyboardInterrupt))
                raise
        return self.manifest

    def _finish(self) -> BundleManifest:
        while self._inflight:
            self._land(*self._inflight.popleft())
        if self._pending:
            self._flush(full_only=False)
        self._collect(0)
        self._shutdown()
        m = self._manifest
        if m.examples == 0:
            raise FdError(f"{self.path}: no examples were written; a bundle needs at least one")
        rows = max(self._counted, 1)
        m.fidelity = {
            "mean_tail_mass": round(self._sums["tail_mass"] / rows, 8),
            "mean_kl_nats": round(self._sums["kl"] / rows, 8),
            "mean_truncation_kl_nats": (round(self._sums["truncation_kl"] / rows, 8)
                                        if self._has_truncation else None),
        }
        for key, val in m.fidelity.items():
            if val is not None and not math.isfinite(val):
                m.fidelity[key] = None
        (self._tmp / JOURNAL).unlink(missing_ok=True)
        manifest = m.to_json().encode()
        write_file_atomic(self._tmp / MANIFEST, manifest)
        if self.sign_key is not None:
            from .signing import sign_folder

            sign_folder(self._tmp, manifest, self.sign_key)
        fsync_dir(self._tmp)
        move_into_place(self._tmp, self.path, self.overwrite)
        return m

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self, keep_partial: bool = False) -> None:
        """Discard everything written so far (background writes are stopped first). With
        ``keep_partial``, the complete shards and their journal stay in the hidden folder,
        for a resumed writer (``resume=True``)."""
        self._shutdown()
        self._writes.clear()
        self._inflight.clear()
        if keep_partial and self._manifest.shards:
            for entry in self._tmp.iterdir():
                if entry.name.endswith(".part"):
                    entry.unlink(missing_ok=True)
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
            remove_created(self._created)
        self._pending = []

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(keep_partial=issubclass(exc_type, KeyboardInterrupt))


def write_bundle(path, example_ids, logits, *, codec: Codec, row_counts=None,
                 **kwargs) -> BundleManifest:
    """Write one bundle from in-memory logits in a single call (see :class:`BundleWriter`)."""
    with BundleWriter(path, codec=codec, **kwargs) as writer:
        writer.add(example_ids, logits, row_counts=row_counts)
    return writer.manifest
