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
MAX_SHARD_BYTES = 1 << 31
ZSTD_LEVEL = 9

_ST_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "U16": torch.uint16,
    "I16": torch.int16, "U32": torch.uint32, "I32": torch.int32, "I64": torch.int64,
    "U64": torch.uint64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64,
}
ST_NAME = {v: k for k, v in _ST_DTYPES.items()}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_shard(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                 level: int = ZSTD_LEVEL) -> tuple[bytes, int]:
    """(zstd-compressed safetensors bytes, uncompressed size)."""
    raw = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(raw), len(raw)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, fsynced."""
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def decompress_bounded(data: bytes, expected_size: int | None, where: str,
                       limit: int = MAX_SHARD_BYTES) -> bytes:
    """Decompress one zstd frame that must grow to exactly ``expected_size`` bytes (or, when
    that is None, to at most ``limit`` bytes, as its frame header declares)."""
    if expected_size is not None and expected_size > limit:
        raise BundleError(f"{where}: the manifest declares {expected_size} uncompressed bytes, "
                          f"over the limit of {limit}; refusing to decompress")
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
        expected_size = declared
    elif declared is not None and declared != expected_size:
        raise BundleError(f"{where}: the zstd frame declares {declared} uncompressed bytes, "
                          f"the manifest {expected_size}; refusing to decompress")
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        parts, got = [], 0
        while got <= expected_size:
            chunk = reader.read(expected_size + 1 - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
    except zstandard.ZstdError as exc:
        raise BundleError(f"{where}: corrupt zstd data ({exc})") from None
    if len(out) != expected_size:
        grew = "more than" if len(out) > expected_size else "only"
        raise BundleError(f"{where}: decompressed to {grew} {len(out)} bytes; expected "
                          f"{expected_size}")
    return out


def parse_header(raw: bytes, where: str) -> tuple[dict[str, dict], dict[str, str]]:
    """The safetensors header (tensor entries, metadata), checked for internal consistency."""
    if len(raw) < 8:
        raise BundleError(f"{where}: {len(raw)} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise BundleError(f"{where}: safetensors header length {n} runs past the end of the "
                          f"{len(raw)}-byte file")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BundleError(f"{where}: safetensors header must be a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BundleError(f"{where}: safetensors '__metadata__' must map strings to strings")
    body = len(raw) - 8 - n
    spans = []
    for name, entry in header.items():
        ok = (isinstance(entry, dict) and entry.get("dtype") in _ST_DTYPES
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) for o in entry["data_offsets"]))
        if not ok:
            raise BundleError(f"{where}: safetensors entry for tensor '{name}' is malformed: "
                              f"{entry!r}")
        start, end = entry["data_offsets"]
        numel = 1
        for d in entry["shape"]:
            numel *= d
        size = numel * _ST_DTYPES[entry["dtype"]].itemsize
        if not 0 <= start <= end <= body or end - start != size:
            raise BundleError(f"{where}: tensor '{name}' has data_offsets {entry['data_offsets']}"
                              f" for {size} bytes of {entry['dtype']}{entry['shape']} in a "
                              f"{body}-byte body")
        spans.append((start, end))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise BundleError(f"{where}: safetensors tensors overlap")
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
