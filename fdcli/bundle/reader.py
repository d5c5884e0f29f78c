"""Reading and verifying bundles.

:class:`BundleReader` checks each shard fully before it yields anything from it: file size,
sha256, bounded decompression, the safetensors header against the manifest, then the values.
:func:`verify_bundle` runs every check over a whole bundle and collects every problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ..errors import BundleError, quoted
from .codecs import Codec
from .sparse import SparseRows, concat_rows
from .manifest import (MANIFEST, SHARD_RE, SIGNATURE, STANDARD_SIGNATURE, BundleManifest,
                       ShardInfo)
from .safeio import DEFAULT_LIMITS, Limits, parse_json, read_regular
from .shards import (ST_DTYPES, check_header, decompress_shard, inflate_shard_to, load_tensors,
                     sha256_bytes)


@dataclass
class LogitBlock:
    """Decoded rows of whole examples: one shard, or a slice of one.

    ``example_ids[i]`` owns rows ``row_offsets[i]:row_offsets[i + 1]`` of every row tensor.
    """

    example_ids: torch.Tensor
    row_offsets: torch.Tensor
    tensors: dict[str, torch.Tensor]
    codec: Codec
    num_classes: int

    @property
    def rows(self) -> int:
        return int(self.row_offsets[-1])

    def row_span(self, first: int, stop: int) -> tuple[int, int]:
        """The rows of examples ``first`` to ``stop - 1``: ``(a, z)``."""
        return int(self.row_offsets[first]), int(self.row_offsets[stop])

    def sparse(self, temperature: float = 1.0) -> SparseRows:
        """Sparse distributions of every row at ``temperature`` (see docs/bundle-format.md)."""
        return self.codec.sparse_at(self.tensors, self.num_classes, temperature)

    def dense(self, temperature: float = 1.0) -> torch.Tensor:
        """Log-probabilities ``[rows, num_classes]`` at ``temperature``."""
        return self.codec.dense_at(self.tensors, self.num_classes, temperature)

    def example(self, i: int) -> "LogitBlock":
        """The rows of the ``i``-th example in this block."""
        return self.examples(i, i + 1)

    def chunks(self, max_rows: int) -> "Iterator[LogitBlock]":
        """This block as runs of whole examples, each of at least ``max_rows`` rows (the last
        of what is left), in order."""
        first, offsets = 0, self.row_offsets.tolist()
        for i in range(1, len(offsets)):
            if offsets[i] - offsets[first] >= max_rows or i == len(offsets) - 1:
                yield self.examples(first, i)
                first = i

    def examples(self, first: int, stop: int) -> "LogitBlock":
        """The rows of examples ``first`` to ``stop - 1`` of this block."""
        a, b = self.row_span(first, stop)
        return LogitBlock(self.example_ids[first:stop], self.row_offsets[first:stop + 1] - a,
                          self.rows_of(a, b), self.codec, self.num_classes)

    def rows_of(self, a: int, z: int) -> dict[str, torch.Tensor]:
        """The tensors of rows ``a:z`` (a codec's shared tensors whole)."""
        shared = self.codec.shared_tensors
        return {k: (v if k in shared else v[a:z]) for k, v in self.tensors.items()}

    def close(self) -> None:
        """Nothing to release (see :class:`SpilledBlock`)."""


class SpilledBlock:
    """One shard's rows in an uncompressed safetensors file (:meth:`BundleReader.spill_shard`),
    read a window of rows at a time with plain reads: one file open at a time, and memory
    for one window of rows. Each window's values are checked as they are read."""

    def __init__(self, path: Path, layout: dict, codec: Codec, num_classes: int, where: str,
                 window: int, rows: int):
        self.path, self.layout, self.codec = path, layout, codec
        self.num_classes, self.where, self.window = num_classes, where, max(1, window)
        self.rows = rows
        # the index is held whole, so it is held small (a thousand clients' shards of 20,000
        # examples took 320 MiB as int64): example ids as int32 where they fit, and no
        # offsets where every example has one row (row_offsets None)
        self.example_ids: torch.Tensor | None = None
        self.row_offsets: torch.Tensor | None = None
        self.shared: dict[str, torch.Tensor] = {}
        self._cache: dict[str, torch.Tensor] = {}
        self._w0 = self._w1 = 0

    def set_index(self, example_ids: torch.Tensor, row_offsets: torch.Tensor) -> None:
        """Keep a checked index, narrowed where that loses nothing."""
        fits = len(example_ids) == 0 or int(example_ids.max()) < 2 ** 31
        self.example_ids = example_ids.int() if fits else example_ids
        one_each = torch.equal(row_offsets, torch.arange(len(row_offsets)))
        self.row_offsets = None if one_each else row_offsets

    def row_span(self, first: int, stop: int) -> tuple[int, int]:
        """The rows of examples ``first`` to ``stop - 1``: ``(a, z)``."""
        if self.row_offsets is None:
            return first, stop
        return int(self.row_offsets[first]), int(self.row_offsets[stop])

    def read(self, name: str, a: int, z: int) -> torch.Tensor:
        """Rows ``a:z`` of tensor ``name``, from the file."""
        start, dtype, shape = self.layout[name]
        torch_dtype = ST_DTYPES[dtype]
        row = torch_dtype.itemsize
        for d in shape[1:]:
            row *= d
        if z <= a:
            return torch.empty((0, *shape[1:]), dtype=torch_dtype)
        with open(self.path, "rb") as f:
            f.seek(start + a * row)
            data = bytearray(f.read((z - a) * row))
        if len(data) != (z - a) * row:
            raise BundleError(f"{self.where}: its inflated copy {self.path} was cut short")
        return torch.frombuffer(data, dtype=torch_dtype).reshape(z - a, *shape[1:])

    def rows_of(self, a: int, z: int) -> dict[str, torch.Tensor]:
        """The tensors of rows ``a:z`` (read with the rows after them, up to a window, and
        checked), the codec's shared tensors whole."""
        if not self._w0 <= a <= z <= self._w1 or not self._cache:
            self._w0, self._w1 = a, min(self.rows, max(z, a + self.window))
            names = [n for n in self.layout
                     if n not in ("example_ids", "row_offsets") and n not in self.shared]
            self._cache = {n: self.read(n, self._w0, self._w1) for n in names}
            problems = self.codec.check_values({**self._cache, **self.shared},
                                               self.num_classes)
            if problems:
                raise BundleError.collected(f"{self.where} (rows {self._w0} to {self._w1 - 1})",
                                            problems)
        return {**{n: v[a - self._w0:z - self._w0] for n, v in self._cache.items()},
                **self.shared}

    def close(self) -> None:
        """Remove the inflated copy."""
        self._cache = {}
        self.path.unlink(missing_ok=True)


@dataclass
class VerifyReport:
    """What :func:`verify_bundle` found. ``ok`` is true when ``problems`` is empty."""

    path: Path
    problems: list[str] = field(default_factory=list)
    manifest: BundleManifest | None = None
    shards_checked: int = 0
    rows_checked: int = 0
    #: the key id that signed the bundle, or None when it is unsigned
    signer: str | None = None
    #: the example ids of the shards that could be read, in bundle order
    example_ids: torch.Tensor | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def manifest_bytes(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The raw bytes of the manifest of the bundle folder ``path``, read within ``limits``."""
    path = Path(path)
    where = path / MANIFEST
    try:
        is_dir = path.is_dir()
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    if not is_dir:
        raise BundleError(f"{path}: not a folder; expected a bundle folder (holding {MANIFEST} "
                          "and shard-NNNNN.safetensors.zst files) or a '.safetensors.zst' shard")
    try:
        return read_regular(where, limits.max_manifest_bytes, "max_manifest_bytes")
    except FileNotFoundError:
        raise BundleError(f"{where}: missing; the bundle is incomplete or not a bundle") from None


def parse_manifest(data: bytes, where: str, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """A manifest's bytes, parsed and checked within ``limits``."""
    return BundleManifest.from_dict(parse_json(data, where, limits), where,
                                    max_classes=limits.max_classes)


def read_manifest(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """The checked manifest of the bundle at ``path``, read within ``limits``."""
    return parse_manifest(manifest_bytes(path, limits), str(Path(path) / MANIFEST), limits)


class BundleReader:
    """Read a bundle shard by shard. Every shard is checked before anything is yielded.

    >>> reader = read_bundle("clients/a/bundle")
    >>> for block in reader.iter_blocks():
    ...     sparse = block.sparse(temperature=2.0)   # ids, logp, tail_logp, all [rows, ...]
    """

    def __init__(self, path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS):
        self.path = Path(path)
        self.limits = limits
        self.manifest_bytes = manifest_bytes(self.path, limits)
        #: pins the whole bundle: the manifest lists every shard's sha256
        self.manifest_sha256 = sha256_bytes(self.manifest_bytes)
        self.manifest = parse_manifest(self.manifest_bytes, str(self.path / MANIFEST), limits)
        self.codec = self.manifest.codec

    def __repr__(self) -> str:
        m = self.manifest
        return (f"BundleReader({str(self.path)!r}, task={m.task!r}, encoding={m.encoding}, "
                f"rows={m.rows}, examples={m.examples})")

    def _shard_data(self, info: ShardInfo) -> tuple[str, bytes]:
        """A shard's compressed bytes, their size and sha256 checked against the manifest."""
        where = f"{self.path / info.file}"
        try:
            data = read_regular(self.path / info.file, self.limits.max_shard_bytes,
                                "max_shard_bytes", expected=info.bytes)
        except FileNotFoundError:
            raise BundleError(f"{where}: listed in {MANIFEST} but missing") from None
        digest = sha256_bytes(data)
        if digest != info.sha256:
            raise BundleError(f"{where}: sha256 is {digest}, the manifest declares {info.sha256};"
                              " the file is corrupt or was changed")
        return where, data

    def _header_check(self, info: ShardInfo, where: str):
        """The check a shard's safetensors header passes before its body is inflated."""
        def check(header, meta) -> None:
            problems = self._check_meta(meta, info, where)
            widths = self.codec.widths(header)
            problems += self.codec.check_widths(widths)
            if not problems:
                problems = check_header(header, self.expected_tensors(info, widths), where)
            if problems:
                raise BundleError.collected(where, problems)
        return check

    def load_shard(self, info: ShardInfo) -> LogitBlock:
        where, data = self._shard_data(info)
        raw, _, _ = decompress_shard(data, info.raw_bytes, where, self.limits.max_shard_bytes,
                                     self._header_check(info, where))
        try:
            tensors = load_tensors(raw)
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"{where}: safetensors could not load the shard ({exc})") from None
        ids, offsets = self._index(tensors, info, where)
        problems = self.codec.check_values(tensors, self.manifest.num_classes)
        if problems:
            raise BundleError.collected(where, problems)
        return LogitBlock(ids, offsets, tensors, self.codec, self.manifest.num_classes)

    def spill_shard(self, info: ShardInfo, folder: str | os.PathLike,
                    window: int = 4096) -> "SpilledBlock":
        """A shard inflated to an uncompressed file in ``folder`` (checked like
        :meth:`load_shard`: the values a window at a time, as they are read) and read back
        ``window`` rows at a time, so that memory holds a window, not the shard. The caller
        removes the file with :meth:`SpilledBlock.close`."""
        where, data = self._shard_data(info)
        path = Path(folder) / f"{os.getpid()}-{id(self)}-{info.file}.safetensors"
        try:
            with open(path, "wb") as f:
                header, _, body = inflate_shard_to(data, info.raw_bytes, where, f,
                                                   self.limits.max_shard_bytes,
                                                   self._header_check(info, where))
            del data
            layout = {name: (body + e["data_offsets"][0], e["dtype"], tuple(e["shape"]))
                      for name, e in header.items()}
            block = SpilledBlock(path, layout, self.codec, self.manifest.num_classes, where,
                                 window, info.rows)
            index = {name: block.read(name, 0, layout[name][2][0])
                     for name in ("example_ids", "row_offsets") if name in layout}
            block.set_index(*self._index(index, info, where))
            block.shared = {name: block.read(name, 0, layout[name][2][0])
                            for name in self.codec.shared_tensors}
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return block

    def _index(self, tensors: dict, info: ShardInfo, where: str):
        """A shard's ``example_ids`` and ``row_offsets`` (taken out of ``tensors``), checked."""
        problems = []
        ids = tensors.pop("example_ids")
        offsets = tensors.pop("row_offsets", None)
        if offsets is None:
            offsets = torch.arange(info.examples + 1, dtype=torch.int64)
        else:
            if int(offsets[0]) != 0 or int(offsets[-1]) != info.rows:
                problems.append(f"tensor 'row_offsets': expected to run from 0 to {info.rows}, "
                                f"found {int(offsets[0])} to {int(offsets[-1])}")
            elif bool((offsets[1:] < offsets[:-1]).any()):
                problems.append("tensor 'row_offsets': offsets decrease")
        if bool((ids < 0).any()):
            problems.append("tensor 'example_ids': negative example ids")
        elif len(torch.unique(ids)) != len(ids):
            problems.append("tensor 'example_ids': an example id appears twice")
        if problems:
            raise BundleError.collected(where, problems)
        return ids, offsets

    def _check_meta(self, meta: dict, info: ShardInfo, where: str) -> list[str]:
        m = self.manifest
        problems = []
        expect_meta = {"format": m.format, "version": str(m.version), "task": m.task,
                       "num_classes": str(m.num_classes), "label_fingerprint": m.label_fingerprint,
                       "proxy_fingerprint": m.proxy_fingerprint, "rows": str(info.rows),
                       "examples": str(info.examples)}
        for key, want in expect_meta.items():
            if meta.get(key) != want:
                problems.append(f"{where}: metadata '{key}' is {quoted(meta.get(key), 200)}, the "
                                f"manifest says {want!r}")
        try:
            if json.loads(meta.get("encoding", "null")) != m.encoding:
                problems.append(f"{where}: metadata 'encoding' is "
                                f"{quoted(meta.get('encoding'), 200)}, the manifest says "
                                f"{m.encoding}")
        except (json.JSONDecodeError, RecursionError):
            problems.append(f"{where}: metadata 'encoding' is not JSON")
        return problems

    def expected_tensors(self, info: ShardInfo, widths: dict) -> dict:
        """``{name: (dtype, shape)}`` of every tensor the shard ``info`` must hold."""
        m = self.manifest
        expected = {"example_ids": (torch.int64, (info.examples,))}
        if m.task == "token":
            expected["row_offsets"] = (torch.int64, (info.examples + 1,))
        expected.update(self.codec.expected(info.rows, m.num_classes, widths))
        return expected

    def check_dense(self, rows: int, clients: int = 1, itemsize: int = 4) -> None:
        """Refuse to build a dense ``[clients, rows, num_classes]`` array over the
        ``max_dense_bytes`` limit."""
        need = clients * rows * self.manifest.num_classes * itemsize
        if need > self.limits.max_dense_bytes:
            raise BundleError(
                f"{self.path}: this needs a dense array of {need} bytes ({clients} x {rows} "
                f"rows x {self.manifest.num_classes} classes x {itemsize} bytes), over the "
                f"max_dense_bytes limit of {self.limits.max_dense_bytes}; raise it with "
                "--limit max_dense_bytes=... if the machine has the memory")

    def iter_blocks(self) -> Iterator[LogitBlock]:
        """One checked :class:`LogitBlock` per shard, in order."""
        for info in self.manifest.shards:
            yield self.load_shard(info)

    def iter_examples(self) -> Iterator[LogitBlock]:
        """One :class:`LogitBlock` per example (its ``example_ids`` has one entry)."""
        for block in self.iter_blocks():
            for i in range(len(block.example_ids)):
                yield block.example(i)

    def read_all(self) -> LogitBlock:
        """Every shard in one block (only for bundles that fit in memory)."""
        blocks = list(self.iter_blocks())
        if self.codec.shared_tensors and len(blocks) > 1:
            raise BundleError(f"{self.path}: a '{self.codec.name}' bundle with {len(blocks)} "
                              "shards has per-shard factors; read it with iter_blocks()")
        offsets = [blocks[0].row_offsets]
        for b in blocks[1:]:
            offsets.append(b.row_offsets[1:] + offsets[-1][-1])
        tensors = concat_rows([b.tensors for b in blocks])
        return LogitBlock(torch.cat([b.example_ids for b in blocks]), torch.cat(offsets),
                          tensors, self.codec, self.manifest.num_classes)


def read_bundle(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> BundleReader:
    """Open the bundle at ``path`` (its manifest is checked now, each shard when read)."""
    return BundleReader(path, limits=limits)


def verify_bundle(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS,
                  trusted_keys: dict | None = None) -> VerifyReport:
    """Check everything in a bundle and collect every problem; never raises BundleError.

    A signature is checked when present; with ``trusted_keys`` (see
    :func:`fdcli.bundle.signing.load_trusted_keys`) one by a trusted key is required."""
    from .signing import check_signature

    report = VerifyReport(Path(path))
    try:
        reader = read_bundle(path, limits)
        entries = sorted(os.listdir(reader.path))
    except BundleError as exc:
        report.problems.extend(exc.problems)
        return report
    except OSError as exc:
        report.problems.append(f"{path}: cannot list the folder ({exc.strerror})")
        return report
    report.manifest = reader.manifest
    try:
        report.signer = check_signature(reader.path, reader.manifest_bytes, trusted_keys, limits)
    except BundleError as exc:
        report.problems.extend(exc.problems)
    listed = {s.file for s in reader.manifest.shards}
    for entry in entries:
        if entry not in (MANIFEST, SIGNATURE, STANDARD_SIGNATURE) and entry not in listed:
            hint = " (a leftover of an interrupted write?)" if not SHARD_RE.match(entry) else ""
            report.problems.append(f"{reader.path / entry}: not listed in {MANIFEST}{hint}")
    seen: list[torch.Tensor] = []
    for info in reader.manifest.shards:
        try:
            block = reader.load_shard(info)
        except BundleError as exc:
            report.problems.extend(exc.problems)
            continue
        seen.append(block.example_ids)
        report.shards_checked += 1
        report.rows_checked += block.rows
    if seen:
        report.example_ids = torch.cat(seen)
        if len(torch.unique(report.example_ids)) != len(report.example_ids):
            report.problems.append(f"{reader.path}: an example id appears in more than one shard")
    return report
