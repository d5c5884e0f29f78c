"""fd aggregate over many clients: wall time, rows/s and the peak memory of the process.

aggregate holds one decoded shard per input bundle until they would pass its max_held_bytes
limit (512 MiB); past it, it inflates them to temporary files and reads a batch of rows at a
time, so that its memory does not grow with the clients' data.

Writes ``--clients`` bundles over one proxy set (token bundles: top-16 rows over a 32,768-id
vocabulary, each client keeping 16 of the same 32 candidate ids per row with its own
probabilities; classification bundles: dense rows over ``--classes`` labels), then runs
``fd aggregate`` on all of them in a fresh process and reports its wall time, output rows per
second, input rows per second and peak RSS (``ru_maxrss`` of the child). It prints JSON.

    python benchmarks/aggregate_scale.py --task token --clients 200 --rows 4096
    python benchmarks/aggregate_scale.py --task classification --clients 200 --rows 20000
    python benchmarks/aggregate_scale.py --task token --overlap zipf --clients 50 \
        --rows 8192 --processes 2,4

With ``--bundles``, it aggregates bundles a real model wrote (``fd emit-logits``) instead of
writing synthetic ones, and reports their union's width per row (the distinct ids the
clients list there), which sets the rules' work:

    python benchmarks/aggregate_scale.py --bundles site-*/bundle --baseline-src WORKTREE
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fdcli.bundle import BundleWriter, DenseCodec, SparseRows, TopKCodec, read_bundle

sys.path.insert(0, str(Path(__file__).parent))
from real_lm import RUNNER  # noqa: E402  (one fd command in a fresh process, its peak RSS)


def run_aggregate(root: Path, bundles: list[str], rule: str, name: str,
                  source: Path | None = None) -> dict:
    """One ``fd aggregate`` of ``bundles`` into ``root/name`` (with fd from the source tree
    ``source``, else this one): wall seconds and peak RSS."""
    peak = root / f".peak-{name}.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve())
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", RUNNER, str(peak), "--quiet",
                          "aggregate", *bundles, "--rule", rule, "--out", str(root / name),
                          "--json"], capture_output=True, text=True, env=env, cwd=root)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(run.stderr)
    return {"aggregate_s": round(wall, 2),
            "peak_rss_mib": round(json.loads(peak.read_text())["peak_rss_mib"]),
            "report": json.loads(run.stdout)}


def run_launched(root: Path, bundles: list[str], rule: str, processes: int) -> dict:
    """``fd aggregate`` under ``torchrun`` with ``processes`` processes (one thread each, as
    torchrun sets): wall seconds."""
    out = root / f"teacher-{processes}p"
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", str(processes), "-m", "fdcli", "--quiet",
                          "aggregate", *bundles, "--rule", rule, "--out", str(out), "--json"],
                         capture_output=True, text=True, cwd=root,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(run.stderr[-4000:])
    return {"aggregate_s": round(wall, 2), "report": json.loads(run.stdout)}


def compare_rows(a: Path, b: Path) -> tuple[bool, dict]:
    """Whether two teachers of the same inputs hold the same rows, bit for bit, and where they
    differ: rows whose values differ, rows whose kept ids differ (a tie broken another way),
    and the largest difference of a kept id's probability (and of the tail's) where the ids
    are the same."""
    ra, rb = read_bundle(a).read_all().sparse(), read_bundle(b).read_all().sparse()
    same = all(torch.equal(x, y) for x, y in ((ra.ids, rb.ids), (ra.logp, rb.logp),
                                               (ra.tail_logp, rb.tail_logp)))
    same_ids = (ra.ids == rb.ids).all(1)
    pa, pb = ra.logp.double().exp(), rb.logp.double().exp()
    values = (pa != pb).any(1) | (ra.tail_logp != rb.tail_logp)
    diff = torch.cat([(pa - pb).abs(), (ra.tail_logp.double().exp()
                                         - rb.tail_logp.double().exp()).abs()[:, None]], 1)
    return same, {
        "rows": len(same_ids), "rows_other_values": int((values & same_ids).sum()),
        "rows_other_ids": int((~same_ids).sum()),
        "max_prob_difference": float(diff[same_ids].max()) if bool(same_ids.any()) else 0.0}


def zipf_rows(rows: int, vocab: int, k: int, g: torch.Generator, s: float = 1.1) -> torch.Tensor:
    """``[rows, k]`` distinct ids per row, ascending: ``4 k`` draws per row with probability
    proportional to ``1 / (rank + 1) ** s`` over a fixed random order of the vocabulary, and
    ``k`` of the distinct ones (rows with fewer are drawn again). Frequent ids recur across
    rows and clients, rare ones rarely, as in a real model's top-k."""
    cdf = (1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** s).cumsum(0)
    cdf /= cdf[-1].clone()
    order = torch.randperm(vocab, generator=torch.Generator().manual_seed(1234))  # shared
    out = torch.empty(rows, k, dtype=torch.int64)
    todo = torch.arange(rows)
    while len(todo):
        drawn = order[torch.searchsorted(cdf, torch.rand(len(todo), 4 * k, generator=g,
                                                         dtype=torch.float64)).clamp(max=vocab - 1)]
        srt = drawn.sort(-1).values
        dup = torch.zeros_like(srt, dtype=torch.bool)
        dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
        # the distinct ids first, in random order, then the duplicates
        key = torch.rand(srt.shape, generator=g) + dup.double()
        picked = srt.gather(1, key.argsort(-1)[:, :k])
        ok = (~dup).sum(-1) >= k
        out[todo[ok]] = picked[ok].sort(-1).values
        todo = todo[~ok]
    return out


def commit_of(source: Path) -> str | None:
    """The git commit that the source tree ``source`` is at, if it is a git checkout."""
    return subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or None


def shared_candidates(rows: int, vocab: int, g: torch.Generator) -> torch.Tensor:
    """``[rows, 32]``: the ids any client may keep in each row (64 sets of 32, in turn)."""
    candidates = torch.sort(torch.stack([torch.randperm(vocab, generator=g)[:32]
                                         for _ in range(64)]), -1).values
    return candidates[torch.arange(rows) % 64]


def shared_rows(base: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` of each row's shared candidates (:func:`shared_candidates`), ascending."""
    pick = torch.rand(base.shape, generator=g).argsort(-1)[:, :k]
    return torch.sort(base.gather(1, pick), -1).values


def write_clients(root: Path, task: str, clients: int, rows: int, vocab: int, classes: int,
                  block: int, shard_bytes: int, overlap: str = "same32") -> int:
    g = torch.Generator().manual_seed(0)
    common = dict(proxy_fingerprint="sha256:" + "1" * 64, model_fingerprint="sha256:" + "2" * 64,
                  max_shard_bytes=shard_bytes)
    if task == "token":
        examples = rows // block
        base = shared_candidates(rows, vocab, g)
    total = 0
    for c in range(clients):
        path = root / f"client-{c:03d}"
        if task == "token":
            with BundleWriter(path, codec=TopKCodec(k=16), task="token", num_classes=vocab,
                              label_fingerprint="sha256:" + "0" * 64, client_id=f"c{c}",
                              **common) as w:
                if overlap == "zipf":
                    ids = zipf_rows(rows, vocab, 16, g)
                else:
                    ids = shared_rows(base, 16, g)
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


def given_bundles(paths: list[Path]) -> tuple[int, dict]:
    """The bytes of the bundles ``paths``, and what they hold: task, rows, ids, encoding and,
    for token bundles, the union's width per row (mean, median and largest: the distinct ids
    the clients list in a row)."""
    from fdcli.rules import _union

    readers = [read_bundle(p) for p in paths]
    m = readers[0].manifest
    info = {"task": "token" if m.task == "token" else "classification", "rows": m.rows,
            "num_classes": m.num_classes, "encoding": m.encoding,
            "client_ids": [r.manifest.producer.client_id for r in readers]}
    if m.task == "token":
        width = _union([r.read_all().sparse() for r in readers])[2].double()
        info["union_width"] = {"mean": round(float(width.mean()), 1),
                               "median": float(width.median()), "max": int(width.max())}
    size = sum(f.stat().st_size for p in paths for f in p.iterdir())
    return size, info


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
    ap.add_argument("--overlap", choices=["same32", "zipf"], default="same32",
                    help="token ids: each client keeps 16 of the same 32 per row (a best case),"
                         " or 16 drawn per client from a Zipf-like law over the vocabulary")
    ap.add_argument("--shard-mib", type=float, default=16.0,
                    help="the bundles' shard size (fd's default: 16); aggregate holds one "
                         "decoded shard per bundle")
    ap.add_argument("--keep", type=Path, default=None, help="write the bundles here (kept)")
    ap.add_argument("--bundles", type=Path, nargs="+", default=None,
                    help="aggregate these bundles (e.g. a real model's, from fd emit-logits) "
                         "instead of writing synthetic ones; --task, --clients, --rows, "
                         "--vocab and --overlap then come from them")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="also run fd aggregate from this fd source tree (e.g. a git worktree "
                         "of an earlier commit) on the same bundles, and compare rows, report, "
                         "time and memory")
    ap.add_argument("--processes", default="",
                    help="also run fd aggregate under torchrun with these numbers of processes "
                         "(comma-separated, e.g. 2,4) on the same bundles, and compare rows, "
                         "report and time with one process's")
    args = ap.parse_args()
    args.rows = max(args.block, args.rows // args.block * args.block) if args.task == "token" \
        else args.rows
    root = (args.keep or Path(tempfile.mkdtemp(prefix="fd-agg-bench-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        if args.bundles:
            bundles = [str(p.resolve()) for p in args.bundles]
            size, given = given_bundles(args.bundles)
            args.task, args.clients, args.rows, args.vocab, args.classes = (
                given["task"], len(bundles), given["rows"], given["num_classes"],
                given["num_classes"])
            args.overlap = "given"
        else:
            size = write_clients(root, args.task, args.clients, args.rows, args.vocab,
                                 args.classes, args.block, int(args.shard_mib * (1 << 20)),
                                 args.overlap)
            bundles = sorted(str(p) for p in root.glob("client-*"))
        write_s = time.perf_counter() - t0
        now = run_aggregate(root, bundles, args.rule, "teacher")
        wall = now["aggregate_s"]
        width = args.vocab if args.task == "token" else args.classes
        result = {"task": args.task, "clients": args.clients, "rows_per_client": args.rows,
                  "rule": args.rule, "shard_mib": args.shard_mib, "vocab": width,
                  "overlap": args.overlap if args.task == "token" else None,
                  "input_bytes": size, "write_s": round(write_s, 1),
                  "aggregate_s": round(wall, 2),
                  "rows_per_s": round(args.rows / wall),
                  "input_rows_per_s": round(args.rows * args.clients / wall),
                  "peak_rss_mib": now["peak_rss_mib"], "torch_threads":
                  torch.get_num_threads(), "cpus": os.cpu_count()}
        if args.bundles:
            result["bundles"] = given
        if args.baseline_src is not None:
            before = run_aggregate(root, bundles, args.rule, "teacher-baseline",
                                   args.baseline_src)
            same, differences = compare_rows(root / "teacher", root / "teacher-baseline")
            result["baseline"] = {
                "source": str(args.baseline_src), "commit": commit_of(args.baseline_src),
                "aggregate_s": before["aggregate_s"],
                "rows_per_s": round(args.rows / before["aggregate_s"]),
                "peak_rss_mib": before["peak_rss_mib"],
                "same_rows": same, "differences": differences,
                "same_report": before["report"]["clients"] == now["report"]["clients"],
                "speedup": round(before["aggregate_s"] / wall, 2)}
        for n in [int(x) for x in args.processes.split(",") if x.strip()]:
            got = run_launched(root, bundles, args.rule, n)
            result[f"processes_{n}"] = {
                "aggregate_s": got["aggregate_s"], "rows_per_s": round(args.rows / got[
                    "aggregate_s"]),
                "same_rows": compare_rows(root / "teacher", root / f"teacher-{n}p")[0],
                "same_report": got["report"]["clients"] == now["report"]["clients"],
                "speedup": round(wall / got["aggregate_s"], 2)}
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
