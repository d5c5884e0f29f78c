"""fd aggregate's reading side: every input bundle's examples in file order, read a shard (or
a window of a spilled shard) at a time, and the bundles walked in step, example by example or
a window of examples at a time, with the checks that one client votes once per example."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from ..errors import IncompatibleBundlesError


class Examples:
    """One bundle's examples in file order, one at a time, checking that ids increase. With
    ``decode``, rows are decoded to dense log-probabilities ``window`` rows at a time."""

    def __init__(self, reader, decode: bool = False, window: int = 4096,
                 spill: Path | None = None, bounds: tuple[int, float] | None = None):
        self.reader, self.decode = reader, decode
        # this process's example ids (several processes): those before lo are skipped, and
        # the stream ends at the first id from hi on
        self.lo, self.hi = bounds or (0, math.inf)
        self.window = max(1, window)
        self.blocks = reader.iter_blocks() if spill is None else (
            reader.spill_shard(info, spill, self.window) for info in reader.manifest.shards)
        if decode:
            reader.check_dense(self.window)
        self.block, self.i, self.last = None, 0, -1
        self.logp, self.w0, self.w1 = None, 0, 0
        self._advance()

    def _advance(self) -> None:
        while self.block is None or self.i >= len(self.block.example_ids):
            if self.block is not None:
                self.block.close()
            self.block, self.i, self.logp = next(self.blocks, None), 0, None
            if self.block is None:
                return
            if self.lo > 0 and self.last < 0:  # still before this process's first example
                ahead = (self.block.example_ids >= self.lo).nonzero().view(-1)
                self.i = int(ahead[0]) if len(ahead) else len(self.block.example_ids)

    @property
    def current(self) -> int | None:
        if self.block is None:
            return None
        e = int(self.block.example_ids[self.i])
        return None if e >= self.hi else e

    def _dense(self, a: int, z: int) -> torch.Tensor:
        """Dense log-probabilities of rows ``a:z`` of the current block (low-rank factors
        are per shard, so rows are decoded from the block's own tensors)."""
        if self.logp is None or a < self.w0 or z > self.w1:
            b = self.block
            self.w0, self.w1 = a, min(b.rows, max(z, a + self.window))
            self.logp = b.codec.dense_at(b.rows_of(self.w0, self.w1), b.num_classes, 1.0)
        return self.logp[a - self.w0:z - self.w0]

    def _check_increasing(self, ids: torch.Tensor) -> None:
        prev = torch.cat([torch.tensor([self.last]), ids[:-1]])
        bad = (ids <= prev).nonzero().view(-1)
        if len(bad):
            self._not_increasing(int(ids[int(bad[0])]), int(prev[int(bad[0])]))

    def _not_increasing(self, e: int, prev: int):
        raise IncompatibleBundlesError(
            f"{self.reader.path}: example ids do not increase through the bundle ({e} after "
            f"{prev}); bundles are aggregated in one streaming pass, so re-emit it with fd "
            "emit-logits")

    def peek(self, n: int) -> torch.Tensor:
        """The ids of (at most) the next ``n`` examples of the current shard (this process's
        only)."""
        ids = self.block.example_ids[self.i:self.i + n].long()
        past = (ids >= self.hi).nonzero().view(-1)
        return ids[:int(past[0])] if len(past) else ids

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` examples of the current shard, one row each: their ids and dense
        log-probabilities ``[n, C]`` (classification bundles, ``decode``)."""
        b, i = self.block, self.i
        ids = b.example_ids[i:i + n].long()
        self._check_increasing(ids)
        self.last = int(ids[-1])
        logp = self._dense(*b.row_span(i, i + n))
        self.i += n
        self._advance()
        return ids, logp

    def pop(self) -> tuple[int, dict[str, torch.Tensor]]:
        b, i = self.block, self.i
        e = int(b.example_ids[i])
        if e <= self.last:
            self._not_increasing(e, self.last)
        self.last = e
        a, z = b.row_span(i, i + 1)
        part = {"logp": self._dense(a, z)} if self.decode else b.rows_of(a, z)
        self.i += 1
        self._advance()
        return z - a, part


def in_windows(streams: Sequence[Examples], size: int, classes: int):
    """Classification bundles in step, up to ``size`` examples at a time: ``(ids, probs,
    present)`` with ``ids`` ``[N]`` increasing, ``probs`` ``[K, N, C]`` (float64) and
    ``present`` ``[K, N]``. Each window runs up to the smallest last id among the bundles'
    next ``size`` examples, so no bundle is read past an example another has yet to give;
    the checks are :func:`_in_step`'s."""
    same = _same_client(streams)
    k_all = len(streams)
    while True:
        live = [s for s in streams if s.current is not None]
        if not live:
            return
        peeks = [s.peek(size) if s.current is not None else None for s in streams]
        hi = min(int(p[-1]) for p in peeks if p is not None)
        union = torch.unique(torch.cat([p[p <= hi] for p in peeks if p is not None]))
        if len(union) > size:
            hi, union = int(union[size - 1]), union[:size]
        probs = torch.zeros(k_all, len(union), classes, dtype=torch.float64)
        present = torch.zeros(k_all, len(union), dtype=torch.bool)
        for k, (s, p) in enumerate(zip(streams, peeks)):
            n = 0 if p is None else int((p <= hi).sum())
            if n:
                ids, logp = s.take(n)
                pos = torch.searchsorted(union, ids)
                probs[k, pos] = logp.double().exp()
                present[k, pos] = True
        for group in same:
            twice = (present[group].sum(0) > 1).nonzero().view(-1)
            if len(twice):
                j = int(twice[0])
                _voted_twice(streams, group, int(union[j]),
                             [k for k in group if bool(present[k, j])])
        yield union, probs, present


def _voted_twice(streams: Sequence[Examples], group: list[int], e: int, voters: list[int]):
    """Refuse bundles ``voters`` (two or more of one client's ``group``) that all give
    example ``e``: one model's bundles (a bundle replayed, slices that overlap), or two
    different models that carry the same client id (two institutions sharing an id)."""
    first, second = (streams[k].reader for k in voters[:2])
    cid = first.manifest.producer.client_id
    a, b = first.manifest.producer.model_fingerprint, second.manifest.producer.model_fingerprint
    if a != b:
        raise IncompatibleBundlesError(
            f"{second.path}: client id {cid!r} is shared by two different models: "
            f"{first.path} (model {a[:19]}...) and {second.path} (model {b[:19]}...), which "
            f"both give example {e}; each institution's bundles need their own id, so re-emit "
            "one of them with --client-id NAME (emission is cheap: fd emit-logits MODEL PROXY "
            "--client-id NAME --out BUNDLE)")
    raise IncompatibleBundlesError(f"{second.path}: client {cid!r} gives example {e} a second "
                                   f"time (also in {first.path}); each client may vote once "
                                   "per example")


def _same_client(streams: Sequence[Examples]) -> list[list[int]]:
    """Groups (of two or more) of the bundles that name the same client id."""
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(streams):
        groups.setdefault(s.reader.manifest.producer.client_id, []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def in_step(streams: Sequence[Examples]):
    """The bundles' examples in increasing id order: ``(id, rows, parts)`` where
    ``parts[k]`` is bundle k's rows of that example, or None where it lacks it.

    Bundles of one client id may cover different examples (proxy slices), but one client
    may not give the same example twice."""
    same = _same_client(streams)
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
        for group in same:
            voters = [k for k in group if parts[k] is not None]
            if len(voters) > 1:
                _voted_twice(streams, group, e, voters)
        yield e, n_rows, parts
