"""What hardened reading costs and what hostile bundles cost it, as JSON.

1. Speed: one full shard (64 MiB of top-16 token rows, the writer's shard size) read by
   ``BundleReader.load_shard`` (lstat/fstat-capped read, sha256, header-first bounded
   inflation of a complete frame, every check), in the same process against (a) the reader
   before hardening, rebuilt from the same pieces (``read_bytes``, sha256, a zstd stream
   read, header parse and checks, safetensors load, value checks) and (b) the bare minimum
   (``read_bytes`` + sha256 + one-shot zstd decompression + safetensors load, no checks).
2. Memory: the peak RSS of a fresh process that imports fd and then verifies (a) a sound
   bundle, (b) one whose manifest is 8 MiB of small JSON values (just under the limit),
   (c) one whose manifest is 200 MB (refused), (d) a 1 GiB zstd bomb behind a sound header.

    python benchmarks/hostile_reading.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import zstandard
from safetensors.torch import load as st_load

from fdcli.bundle import BundleWriter, TopKCodec, read_bundle
from fdcli.bundle.manifest import fingerprint_labels
from fdcli.bundle.shards import check_header, load_tensors, parse_header

CHILD = """
import sys, json
from fdcli.bundle import verify_bundle
report = verify_bundle(sys.argv[1])
# VmHWM: this process's own peak (ru_maxrss can carry the parent's peak across exec)
peak = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({"ok": report.ok, "problem": (report.problems or [""])[0][-160:],
                  "max_rss_mib": round(peak / 1024)}))
"""


def make_bundle(path: Path, rows: int, vocab: int = 512) -> None:
    g = torch.Generator().manual_seed(0)
    with BundleWriter(path, codec=TopKCodec(16), task="token", num_classes=vocab,
                      label_fingerprint=fingerprint_labels([str(i) for i in range(vocab)]),
                      proxy_fingerprint="sha256:" + "ab" * 32, client_id="bench",
                      model_fingerprint="sha256:" + "cd" * 32) as w:
        step = 20_000
        for start in range(0, rows, step):
            n = min(step, rows - start)
            w.add(torch.arange(start // 100, (start + n) // 100),
                  torch.randn(n, vocab, generator=g) * 3, row_counts=[100] * (n // 100))


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def child_rss(bundle: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(bundle)], capture_output=True,
                         text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_200_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fd-hostile-"))
    sound = root / "sound"
    make_bundle(sound, args.rows)
    reader = read_bundle(sound)
    info = reader.manifest.shards[0]
    shard = sound / info.file

    def plain():
        data = shard.read_bytes()
        assert hashlib.sha256(data).hexdigest() == info.sha256
        return st_load(zstandard.ZstdDecompressor().decompress(data))

    def unhardened():
        data = shard.read_bytes()
        assert hashlib.sha256(data).hexdigest() == info.sha256
        raw = zstandard.ZstdDecompressor().stream_reader(data).read(info.raw_bytes + 1)
        header, _ = parse_header(raw, str(shard))
        widths = reader.codec.widths(header)
        assert not check_header(header, reader.expected_tensors(info, widths), str(shard))
        tensors = load_tensors(raw)
        ids, offsets = tensors.pop("example_ids"), tensors.pop("row_offsets")
        assert len(torch.unique(ids)) == len(ids) and not bool((offsets[1:] < offsets[:-1]).any())
        assert not reader.codec.check_values(tensors, reader.manifest.num_classes)

    times = {}
    for _ in range(args.repeats):  # interleaved, so that a noisy machine hits all three
        for name, fn in (("fd_load_shard_s", lambda: reader.load_shard(info)),
                         ("unhardened_s", unhardened), ("plain_no_checks_s", plain)):
            times[name] = min(times.get(name, float("inf")), best(fn, 1))
    speed = {"shard_rows": info.rows, "shard_raw_mib": round(info.raw_bytes / 2**20, 1),
             "shard_stored_mib": round(info.bytes / 2**20, 1),
             **{k: round(v, 3) for k, v in times.items()},
             "ratio_fd_to_unhardened": round(times["fd_load_shard_s"] / times["unhardened_s"], 3),
             "ratio_fd_to_plain_no_checks": round(times["fd_load_shard_s"]
                                                  / times["plain_no_checks_s"], 2)}

    small = root / "small"
    make_bundle(small, 2000)
    manifest = json.loads((small / "manifest.json").read_text())
    big = root / "big-manifest"
    huge = root / "huge-manifest"
    bomb = root / "bomb"
    for folder in (big, huge, bomb):
        subprocess.run(["cp", "-r", str(small), str(folder)], check=True)
    filler = json.dumps({**manifest, "producer": {**manifest["producer"], "config": {
        "x": [0] * ((8 << 20) // 3 - 4096)}}})
    (big / "manifest.json").write_text(filler)
    with open(huge / "manifest.json", "w") as fh:
        fh.write('{"x": [' + "0," * (100 << 20) + "0]}")
    raw = zstandard.ZstdDecompressor().decompress((small / manifest["shards"][0]["file"])
                                                  .read_bytes())
    data = zstandard.ZstdCompressor(level=1).compress(raw + b"\0" * ((1 << 30) - len(raw)))
    (bomb / manifest["shards"][0]["file"]).write_bytes(data)
    m = json.loads((bomb / "manifest.json").read_text())
    m["shards"][0].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                          raw_bytes=1 << 30)
    (bomb / "manifest.json").write_text(json.dumps(m))
    memory = {"sound_bundle": child_rss(small),
              "manifest_8mib_small_values": {**child_rss(big),
                                             "manifest_bytes": len(filler)},
              "manifest_200mb": child_rss(huge),
              "bomb_1gib_behind_a_sound_header": {**child_rss(bomb),
                                                  "stored_bytes": len(data)}}
    subprocess.run(["rm", "-rf", str(root)])
    print(json.dumps({"speed": speed, "memory": memory}, indent=1))


if __name__ == "__main__":
    main()
