"""fd aggregate over many clients: wall time, rows/s and the peak memory of the process.

aggregate holds one decoded shard per input bundle, so its memory grows with the number of
clients times the shard size, and stops growing with the proxy set once bundles have several
shards (``--shard-mib`` small shows it without writing gigabytes).

Writes ``--clients`` bundles over one proxy set (token bundles: top-16 rows over a 32,768-id
vocabulary, each client keeping 16 of the same 32 candidate ids per row with its own
probabilities; classification bundles: dense rows over ``--classes`` labels), then runs
``fd aggregate`` on all of them in a fresh process and reports its wall time, output rows per
second, input rows per second and peak RSS (``ru_maxrss`` of the child). It prints JSON.

    python benchmarks/aggregate_scale.py --task token --clients 200 --rows 4096
    python benchmarks/aggregate_scale.py --task classification --clients 200 --rows 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fdcli.bundle import BundleWriter, DenseCodec, SparseRows, TopKCodec


def write_clients(root: Path, task: str, clients: int, rows: int, vocab: int, classes: int,
                  block: int, shard_bytes: int) -> int:
    g = torch.Generator().manual_seed(0)
    common = dict(proxy_fingerprint="sha256:" + "1" * 64, model_fingerprint="sha256:" + "2" * 64,
                  max_shard_bytes=shard_bytes)
    if task == "token":
        examples = rows // block
        candidates = torch.sort(torch.stack([torch.randperm(vocab, generator=g)[:32]
                                             for _ in range(64)]), -1).values
        base = candidates[torch.arange(rows) % 64]  # [rows, 32]: the ids any client may keep
    total = 0
    for c in range(clients):
        path = root / f"client-{c:03d}"
        if task == "token":
            with BundleWriter(path, codec=TopKCodec(k=16), task="token", num_classes=vocab,
                              label_fingerprint="sha256:" + "0" * 64, client_id=f"c{c}",
                              **common) as w:
                pick = torch.rand(rows, 32, generator=g).argsort(-1)[:, :16]
                ids = torch.sort(base.gather(1, pick), -1).values
                logits = torch.randn(rows, 17, generator=g) * 2
                logp = torch.log_softmax(logits, -1)
                w.add_sparse(range(examples), SparseRows(ids, logp[:, :16], logp[:, 16], vocab),
                             row_counts=[block] * examples)
        else:
            with BundleWriter(path, codec=DenseCodec(), task="classification",
                              num_classes=classes, label_names=[f"l{i}" for i in range(classes)],
                              client_id=f"c{c}", **common) as w:
                w.add(range(rows), torch.randn(rows, classes, generator=g) * 3)
        total += sum(f.stat().st_size for f in path.iterdir())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["token", "classification"], default="token")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rows", type=int, default=4096, help="rows per client (token rows, or "
                                                           "examples)")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--block", type=int, default=128, help="token rows per example")
    ap.add_argument("--rule", default="confidence")
    ap.add_argument("--shard-mib", type=float, default=16.0,
                    help="the bundles' shard size (fd's default: 16); aggregate holds one "
                         "decoded shard per bundle")
    ap.add_argument("--keep", type=Path, default=None, help="write the bundles here (kept)")
    args = ap.parse_args()
    args.rows = max(args.block, args.rows // args.block * args.block) if args.task == "token" \
        else args.rows
    root = args.keep or Path(tempfile.mkdtemp(prefix="fd-agg-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        size = write_clients(root, args.task, args.clients, args.rows, args.vocab, args.classes,
                             args.block, int(args.shard_mib * (1 << 20)))
        write_s = time.perf_counter() - t0
        bundles = sorted(str(p) for p in root.glob("client-*"))
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "fdcli", "--quiet", "aggregate", *bundles,
                              "--rule", args.rule, "--out", str(root / "teacher"), "--json"],
                             capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if run.returncode != 0:
            raise SystemExit(run.stderr)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        width = args.vocab if args.task == "token" else args.classes
        result = {"task": args.task, "clients": args.clients, "rows_per_client": args.rows,
                  "rule": args.rule, "shard_mib": args.shard_mib, "vocab": width,
                  "input_bytes": size, "write_s": round(write_s, 1),
                  "aggregate_s": round(wall, 2),
                  "rows_per_s": round(args.rows / wall),
                  "input_rows_per_s": round(args.rows * args.clients / wall),
                  "peak_rss_mib": round(peak_kib / 1024), "torch_threads":
                  torch.get_num_threads(), "cpus": os.cpu_count()}
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
