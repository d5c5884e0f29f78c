"""One shard on disk: a safetensors file compressed whole with zstd.

Reading is defensive, because shards come from other institutions: the sha256 is checked
first, decompression is bounded by the size the manifest declares, and the safetensors header
is parsed and checked against the expected dtypes and shapes before any tensor is built.
Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
import zstandard
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import BundleError

#: no shard may decompress to more than this, whatever its manifest says (override per read).
MAX_SHARD_BYTES = 1 << 30
ZSTD_LEVEL = 9
MAX_HEADER_BYTES = 16 << 20

ST_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "U16": torch.uint16,
    "I16": torch.int16, "U32": torch.uint32, "I32": torch.int32, "I64": torch.int64,
    "U64": torch.uint64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64,
}
ST_NAME = {v: k for k, v in ST_DTYPES.items()}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_shard(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                 level: int = ZSTD_LEVEL) -> tuple[bytes, int]:
    """(zstd-compressed safetensors bytes, uncompressed size). zstd compresses on every core
    (one frame still; its output is the same for any number of worker threads), and the
    safetensors header is written in one order (:func:`canonical_header`), so a shard's bytes
    depend on its tensors and metadata only, not on the machine or the process."""
    raw = canonical_header(st_save({k: v.contiguous() for k, v in tensors.items()},
                                   metadata=metadata))
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=-1)
    return compressor.compress(raw), len(raw)


def canonical_header(raw: bytes) -> bytes:
    """The safetensors file ``raw`` with its JSON header's keys sorted (the metadata's too).
    safetensors writes the metadata in the order of a hash map seeded afresh in every
    process, so the same tensors would otherwise give different bytes from run to run."""
    n = struct.unpack("<Q", raw[:8])[0]
    blob = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()
    if len(blob) > n:  # cannot happen for a compact header; keep the file as written
        return raw
    return raw[:8] + blob.ljust(n, b" ") + raw[8 + n:]


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, fsynced."""
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def frame_extent(data: bytes, where: str) -> None:
    """Require ``data`` to be exactly one complete zstd frame: its blocks walked from the
    frame header to the last one, then the 4-byte checksum when the frame has one, and
    nothing after. (zstd's streaming decoder accepts a frame cut before its checksum.)"""
    if data[:4] != _ZSTD_MAGIC:
        raise BundleError(f"{where}: not a zstd frame (bad magic number); expected a "
                          "zstd-compressed safetensors file")
    try:
        pos = zstandard.frame_header_size(data)
        checksum = zstandard.get_frame_parameters(data).has_checksum
    except zstandard.ZstdError as exc:
        raise BundleError(f"{where}: not a zstd frame ({exc})") from None
    while True:
        if pos + 3 > len(data):
            raise BundleError(f"{where}: the zstd frame is incomplete (it ends inside a "
                              "block); the file was truncated")
        head = int.from_bytes(data[pos:pos + 3], "little")
        last, kind, size = head & 1, (head >> 1) & 3, head >> 3
        if kind == 3:
            raise BundleError(f"{where}: corrupt zstd data (a reserved block type)")
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    end = pos + (4 if checksum else 0)
    if end > len(data):
        raise BundleError(f"{where}: the zstd frame is incomplete (its end or checksum is "
                          "missing); the file was truncated")
    if end < len(data):
        raise BundleError(f"{where}: {len(data) - end} byte(s) follow the zstd frame; a shard "
                          "is exactly one frame")


class FrameReader:
    """Bounded streaming decompression of exactly one complete zstd frame: :meth:`read`
    inflates only as much as it is asked for, so a bomb is refused after its header, not
    after it has been inflated in full; :meth:`finish` requires the frame to end exactly
    where the data ends, after exactly ``expected_size`` bytes."""

    def __init__(self, data: bytes, where: str, expected_size: int, walked: bool = False):
        if not walked:
            frame_extent(data, where)
        self.where, self.expected = where, expected_size
        self._reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        self._got = 0

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the frame (fewer only if it ends first)."""
        parts = []
        try:
            while n > 0:
                chunk = self._reader.read(n)
                if not chunk:
                    break
                parts.append(chunk)
                n -= len(chunk)
        except zstandard.ZstdError as exc:
            raise BundleError(f"{self.where}: corrupt zstd data ({exc})") from None
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._got += len(out)
        return out

    def finish(self) -> None:
        """Require the frame to hold nothing past ``expected_size`` bytes."""
        if self._got != self.expected:
            raise BundleError(f"{self.where}: decompressed to only {self._got} bytes; expected "
                              f"{self.expected}")
        if self.read(1):
            raise BundleError(f"{self.where}: decompressed to more than {self.expected} bytes, "
                              "the size the manifest declares")


def frame_size(data: bytes, expected_size: int | None, where: str,
               limit: int = MAX_SHARD_BYTES) -> int:
    """The uncompressed size of the zstd frame ``data``: ``expected_size`` (the manifest's),
    which the frame header must not contradict, or, when that is None, the size the frame
    header declares. Either must be at most ``limit``."""
    if expected_size is not None and expected_size > limit:
        raise BundleError(f"{where}: the manifest declares {expected_size} uncompressed bytes, "
                          f"over the max_shard_bytes limit of {limit}; refusing to decompress")
    try:
        declared = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as exc:
        raise BundleError(f"{where}: not a zstd frame ({exc}); expected a zstd-compressed "
                          "safetensors file") from None
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        declared = None
    if expected_size is None:
        if declared is None or declared > limit:
            raise BundleError(f"{where}: the zstd frame declares "
                              f"{'no' if declared is None else declared} uncompressed size; "
                              f"expected a declared size of at most {limit} bytes")
        return declared
    if declared is not None and declared != expected_size:
        raise BundleError(f"{where}: the zstd frame declares {declared} uncompressed bytes, "
                          f"the manifest {expected_size}; refusing to decompress")
    return expected_size


def decompress_shard(data: bytes, expected_size: int | None, where: str,
                     limit: int = MAX_SHARD_BYTES, check=None) -> tuple[bytes, dict, dict]:
    """Decompress a shard, header first: ``(raw safetensors bytes, header, metadata)``.

    The safetensors header is parsed, and passed to ``check(header, metadata)`` (which raises
    to refuse it), before the body is inflated; the frame must be complete."""
    size, header, meta, _ = _checked_header(data, expected_size, where, limit, check)
    # inflate again from the start into one buffer: cheaper than joining the pieces
    frame = FrameReader(data, where, size, walked=True)
    raw = frame.read(size)
    frame.finish()
    return raw, header, meta


#: how much :func:`inflate_shard_to` inflates at a time
INFLATE_CHUNK = 4 << 20


def inflate_shard_to(data: bytes, expected_size: int | None, where: str, file,
                     limit: int = MAX_SHARD_BYTES, check=None) -> tuple[dict, dict, int]:
    """:func:`decompress_shard` into the open binary ``file``, ``INFLATE_CHUNK`` bytes at a
    time (memory does not grow with the shard): ``(header, metadata, body offset)``; a
    tensor's ``data_offsets`` count from the body offset."""
    size, header, meta, body = _checked_header(data, expected_size, where, limit, check)
    frame = FrameReader(data, where, size, walked=True)
    left = size
    while left:
        chunk = frame.read(min(INFLATE_CHUNK, left))
        if not chunk:
            break
        file.write(chunk)
        left -= len(chunk)
    frame.finish()
    return header, meta, body


def _checked_header(data: bytes, expected_size: int | None, where: str, limit: int,
                    check) -> tuple[int, dict, dict, int]:
    """The shard's inflated size, its safetensors header (checked, and passed to ``check``,
    before the body is inflated) and metadata, and where its body starts."""
    size = frame_size(data, expected_size, where, limit)
    frame = FrameReader(data, where, size)
    head = frame.read(8)
    if len(head) < 8:
        raise BundleError(f"{where}: {len(head)} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise BundleError(f"{where}: safetensors header length {n} runs past the end of the "
                          f"{size}-byte file")
    if n > MAX_HEADER_BYTES:
        raise BundleError(f"{where}: safetensors header of {n} bytes, over {MAX_HEADER_BYTES}; "
                          "an fd shard's header is a few hundred bytes")
    blob = frame.read(n)
    header, meta = parse_header_json(blob, size - 8 - n, where)
    if check is not None:
        check(header, meta)
    return size, header, meta, 8 + n


def parse_header(raw: bytes, where: str) -> tuple[dict[str, dict], dict[str, str]]:
    """The safetensors header (tensor entries, metadata) of a whole file, checked."""
    if len(raw) < 8:
        raise BundleError(f"{where}: {len(raw)} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise BundleError(f"{where}: safetensors header length {n} runs past the end of the "
                          f"{len(raw)}-byte file")
    return parse_header_json(raw[8:8 + n], len(raw) - 8 - n, where)


def parse_header_json(blob: bytes, body: int,
                      where: str) -> tuple[dict[str, dict], dict[str, str]]:
    """A safetensors header (its JSON ``blob``) checked against a ``body`` of that many
    bytes: every tensor's dtype, shape and span, no overlaps."""
    try:
        header = json.loads(blob)
    except RecursionError:
        raise BundleError(f"{where}: safetensors header is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BundleError(f"{where}: safetensors header must be a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BundleError(f"{where}: safetensors '__metadata__' must map strings to strings")
    spans = []
    for name, entry in header.items():
        ok = (isinstance(entry, dict) and entry.get("dtype") in ST_DTYPES
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) for o in entry["data_offsets"]))
        if not ok:
            raise BundleError(f"{where}: safetensors entry for tensor '{name}' is malformed: "
                              f"{entry!r}"[:500])
        start, end = entry["data_offsets"]
        numel = 1
        for d in entry["shape"]:
            numel *= d
        size = numel * ST_DTYPES[entry["dtype"]].itemsize
        if not 0 <= start <= end <= body or end - start != size:
            raise BundleError(f"{where}: tensor '{name}' has data_offsets {entry['data_offsets']}"
                              f" for {size} bytes of {entry['dtype']}{entry['shape']} in a "
                              f"{body}-byte body")
        spans.append((start, end))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise BundleError(f"{where}: safetensors tensors overlap")
    covered = sum(b - a for a, b in spans)
    if covered != body:
        raise BundleError(f"{where}: the safetensors tensors cover {covered} bytes of a "
                          f"{body}-byte body; the rest is not part of any tensor")
    return header, meta


def check_header(header: dict[str, dict],
                 expected: dict[str, tuple[torch.dtype, tuple[int, ...]]], where: str) -> list[str]:
    """Every difference between a shard's tensors and what the manifest implies."""
    problems = []
    for name in sorted(set(header) - set(expected)):
        problems.append(f"{where}: unexpected tensor '{name}'")
    for name, (dtype, shape) in expected.items():
        entry = header.get(name)
        if entry is None:
            problems.append(f"{where}: tensor '{name}' is missing; expected "
                            f"{ST_NAME[dtype]}{list(shape)}")
            continue
        if entry["dtype"] != ST_NAME[dtype] or tuple(entry["shape"]) != tuple(shape):
            problems.append(f"{where}: tensor '{name}': expected {ST_NAME[dtype]}{list(shape)}, "
                            f"found {entry['dtype']}{entry['shape']}")
    return problems


def load_tensors(raw: bytes) -> dict[str, torch.Tensor]:
    """Build the tensors of a checked safetensors file (no pickle involved)."""
    return st_load(raw)
