"""A hypothesis fuzzer over bundles: manifests (as JSON and as bytes), shard bytes (compressed
and raw, resealed so that the deeper checks are reached) and file types (symlinks, FIFOs,
folders, empty files, strays). Every case runs verify, a full read, inspect and aggregate;
only :class:`~fdcli.errors.FdError` may escape.

Run as ``python -m tests.fuzzing [--scale N]``: it prints ``{"cases", "seconds",
"max_rss_mib"}`` as JSON.
``tests/test_fuzz.py`` runs it in a child process, to bound its time and its peak memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdcli.bundle import (DenseCodec, SampleCodec, TopKCodec, read_bundle, verify_bundle,
                          write_bundle)
from fdcli.bundle.inspect import describe
from fdcli.bundle.manifest import fingerprint_labels
from fdcli.bundle.safeio import Limits
from fdcli.errors import FdError
from fdcli.stages.aggregate import aggregate

#: small limits, so that a case that would allocate by an untrusted field fails fast
LIMITS = Limits(max_manifest_bytes=1 << 20, max_shard_bytes=16 << 20, max_classes=1 << 16,
                max_dense_bytes=64 << 20)
CASES = {"n": 0}
SHARD = "shard-00000.safetensors.zst"


def _templates(root: Path) -> dict[str, Path]:
    """One small bundle per kind, written by the real writer."""
    g = torch.Generator().manual_seed(0)
    common = dict(proxy_fingerprint="sha256:" + "ab" * 32, model_fingerprint="sha256:" + "cd" * 32)
    out = {}
    for name, codec, task in (("dense", DenseCodec(), "classification"),
                              ("topk", TopKCodec(k=3), "classification"),
                              ("token-topk", TopKCodec(k=3, value_dtype="fp16"), "token"),
                              ("token-sample", SampleCodec(draws=4), "token")):
        path = root / name
        labels = [f"l{i}" for i in range(12)]
        rows = [2, 1, 3] if task == "token" else None
        n_rows = 6 if task == "token" else 3
        write_bundle(path, torch.arange(3), torch.randn(n_rows, 12, generator=g) * 3,
                     codec=codec, task=task, num_classes=12, row_counts=rows,
                     label_names=labels if task == "classification" else None,
                     label_fingerprint=None if task == "classification"
                     else fingerprint_labels(labels), client_id=name, **common)
        out[name] = path
    return out


ROOT = Path(tempfile.mkdtemp(prefix="fd-fuzz-"))
TEMPLATES = _templates(ROOT / "templates")
KINDS = sorted(TEMPLATES)


def _fresh(kind: str) -> Path:
    CASES["n"] += 1
    case = ROOT / "case"
    if case.exists() or case.is_symlink():
        shutil.rmtree(case, ignore_errors=True)
    for leftover in ROOT.glob(".teacher*"):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(TEMPLATES[kind], case)
    return case


def _exercise(bundle: Path) -> None:
    """Everything a coordinator does with a bundle; only FdError may escape each step."""
    report = verify_bundle(bundle, LIMITS)
    assert isinstance(report.problems, list)
    for step in (lambda: [b.sparse() for b in read_bundle(bundle, LIMITS).iter_blocks()],
                 lambda: describe(bundle, LIMITS),
                 lambda: describe(bundle / SHARD, LIMITS),
                 lambda: aggregate([bundle], ROOT / "teacher", rule="median", limits=LIMITS,
                                   progress=False, overwrite=True)):
        try:
            step()
        except FdError:
            pass
    if report.ok:  # a bundle verify passes must also read
        read_bundle(bundle, LIMITS).read_all() if not read_bundle(
            bundle, LIMITS).codec.shared_tensors else None


def _reseal(bundle: Path, data: bytes) -> None:
    """Replace the shard and make the manifest agree with it (sha256 and sizes)."""
    (bundle / SHARD).write_bytes(data)
    m = json.loads((bundle / "manifest.json").read_text())
    m["shards"][0].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    try:
        m["shards"][0]["raw_bytes"] = max(1, zstandard.get_frame_parameters(data).content_size)
    except zstandard.ZstdError:
        pass
    (bundle / "manifest.json").write_text(json.dumps(m))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=30)
    | st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, "", "dense", "topk", "token",
                       "classification", "shard-00000.safetensors.zst", "\x1b[31m[/x]"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)

def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def _paths(value, prefix=()):
    """Every (path, value) in a parsed JSON document."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def fuzz_manifest_fields(n: int):
    @fast(n)
    @given(st.sampled_from(KINDS), st.data())
    def case(kind, data):
        bundle = _fresh(kind)
        m = json.loads((bundle / "manifest.json").read_text())
        for _ in range(data.draw(st.integers(1, 3))):
            paths = [p for p, _ in _paths(m) if p]
            path = data.draw(st.sampled_from(paths))
            parent = m
            for key in path[:-1]:
                parent = parent[key]
            action = data.draw(st.sampled_from(["set", "delete", "add"]))
            if action == "delete":
                del parent[path[-1]]
            elif action == "add" and isinstance(parent, dict):
                parent[data.draw(st.text(max_size=10))] = data.draw(json_values)
            else:
                parent[path[-1]] = data.draw(json_values)
        (bundle / "manifest.json").write_text(json.dumps(m))
        _exercise(bundle)
    case()


def fuzz_manifest_bytes(n: int):
    @fast(n)
    @given(st.sampled_from(KINDS), st.data())
    def case(kind, data):
        bundle = _fresh(kind)
        raw = bytearray((bundle / "manifest.json").read_bytes())
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[i:]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=40))
        (bundle / "manifest.json").write_bytes(bytes(raw))
        _exercise(bundle)
    case()


def fuzz_shard_bytes(n: int):
    @fast(n)
    @given(st.sampled_from(KINDS), st.booleans(), st.booleans(), st.data())
    def case(kind, raw_level, reseal, data):
        bundle = _fresh(kind)
        blob = (bundle / SHARD).read_bytes()
        if raw_level:
            blob = zstandard.ZstdDecompressor().decompress(blob)
        blob = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 6))):
            op = data.draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
            i = data.draw(st.integers(0, max(0, len(blob) - 1)))
            if op == "flip" and blob:
                blob[i] = data.draw(st.integers(0, 255))
            elif op == "truncate":
                del blob[i:]
            elif op == "insert":
                blob[i:i] = data.draw(st.binary(min_size=1, max_size=64))
            elif raw_level and len(blob) >= 8:  # a lying safetensors header length
                blob[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
        blob = bytes(blob)
        if raw_level:
            blob = zstandard.ZstdCompressor(
                write_content_size=data.draw(st.booleans())).compress(blob)
        if reseal or raw_level:
            _reseal(bundle, blob)
        else:
            (bundle / SHARD).write_bytes(blob)
        _exercise(bundle)
    case()


def fuzz_file_types(n: int):
    @fast(n)
    @given(st.sampled_from(KINDS), st.sampled_from(["manifest.json", SHARD, "signature.json",
                                                    "stray"]),
           st.sampled_from(["symlink-shard", "symlink-devzero", "symlink-missing", "fifo",
                            "folder", "empty", "missing", "sparse"]))
    def case(kind, name, what):
        bundle = _fresh(kind)
        target = bundle / name
        if target.exists():
            target.unlink()
        if what == "symlink-shard":
            target.symlink_to(TEMPLATES[kind] / SHARD)
        elif what == "symlink-devzero":
            target.symlink_to("/dev/zero")
        elif what == "symlink-missing":
            target.symlink_to(ROOT / "nowhere")
        elif what == "fifo":
            os.mkfifo(target)
        elif what == "folder":
            target.mkdir()
        elif what == "empty":
            target.write_bytes(b"")
        elif what == "sparse":
            with open(target, "wb") as fh:
                fh.truncate(1 << 40)
        _exercise(bundle)
    case()


def main(scale: float = 1.0) -> dict:
    start = time.perf_counter()
    plan = ((fuzz_manifest_fields, 800), (fuzz_manifest_bytes, 300), (fuzz_shard_bytes, 800),
            (fuzz_file_types, 250))
    for fuzz, n in plan:
        fuzz(max(1, int(n * scale)))
    # VmHWM: this process's own peak (ru_maxrss can carry the parent's peak across exec)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM:"))
    result = {"cases": CASES["n"], "seconds": round(time.perf_counter() - start, 2),
              "max_rss_mib": round(peak / 1024)}
    shutil.rmtree(ROOT, ignore_errors=True)
    return result


if __name__ == "__main__":
    scale = float(sys.argv[sys.argv.index("--scale") + 1]) if "--scale" in sys.argv else 1.0
    print(json.dumps(main(scale)))
