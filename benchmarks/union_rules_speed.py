"""The token rules on the listed entries, against an earlier commit's, in one process.

``aggregate_scale.py`` times whole ``fd aggregate`` runs one after the other, and on a shared
machine their times drift by a fifth between runs. This times only what a chunk of rows costs
the rules (the union, its entries, the rule and the outlier report's distances, as
``fdcli.rules._combine`` runs them), for this tree's ``fdcli`` and a baseline source tree's
loaded beside it as another package, on the same clients, alternating between the two, and
keeps each one's fastest of ``--repeats``. The results must be the same: the combined rows
(float32 log-probabilities, as written) bit for bit, and the outlier distances. It also
times re-sparsifying the combined rows to the top 16 (``TopKCodec.encode_sparse``, as the
writer does) with each version's codec: the same tensors. It prints JSON.

    python benchmarks/union_rules_speed.py --baseline-src WORKTREE --clients 200 --rows 372
    python benchmarks/union_rules_speed.py --baseline-src WORKTREE --bundles site-*/bundle
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from aggregate_scale import (commit_of, shared_candidates, shared_rows,  # noqa: E402
                             zipf_rows)

from fdcli import rules  # noqa: E402
from fdcli.bundle import read_bundle  # noqa: E402
from fdcli.bundle.codecs import topk  # noqa: E402
from fdcli.sparse_rows import SparseRows  # noqa: E402


def load_baseline(source: Path):
    """``fdcli`` of the source tree ``source`` as the package ``fdcli_baseline``: its rules
    and top-k codec modules."""
    spec = importlib.util.spec_from_file_location(
        "fdcli_baseline", source / "fdcli" / "__init__.py",
        submodule_search_locations=[str(source / "fdcli")])
    package = importlib.util.module_from_spec(spec)
    sys.modules["fdcli_baseline"] = package
    spec.loader.exec_module(package)
    import fdcli_baseline.bundle.codecs.topk as base_topk  # noqa: PLC0415
    import fdcli_baseline.rules as base_rules  # noqa: PLC0415
    return base_rules, base_topk


def chunk_work(rules_mod, clients, present, rule: str, params: dict):
    """A chunk's rule work as ``fd aggregate`` runs it (``rules._combine``): the union, the
    entries, the rule, the outlier distances; the combined rows and the distances."""
    distances: list = []
    rows = rules_mod._combine(clients, present, rule, distances, rules_mod._union(clients),
                              **params)
    return rows, *distances[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-src", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rows", type=int, default=372,
                    help="rows of one chunk (fd aggregate's at 200 Zipf clients: about 372)")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--overlap", choices=["zipf", "same32"], default="zipf",
                    help="each client's 16 ids per row: drawn from a Zipf-like law over the "
                         "vocabulary, or 16 of the same 32 (as aggregate_scale.py's)")
    ap.add_argument("--bundles", type=Path, nargs="+", default=None,
                    help="the rows of these token bundles (a real model's, from fd "
                         "emit-logits), every client present, in one chunk, instead of "
                         "synthetic ones")
    ap.add_argument("--rules", default="confidence,median,trimmed-mean")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    base_rules, base_topk = load_baseline(args.baseline_src)
    g = torch.Generator().manual_seed(0)
    if args.bundles:
        clients = [read_bundle(p).read_all().sparse() for p in args.bundles]
        args.clients, args.overlap = len(clients), "given"
        args.rows, args.vocab = clients[0].ids.shape[0], clients[0].num_classes
        present = torch.ones(args.clients, args.rows, dtype=torch.bool)
    else:
        clients = []
        base = shared_candidates(args.rows, args.vocab, g) if args.overlap == "same32" else None
        for _ in range(args.clients):
            logp = torch.log_softmax(torch.randn(args.rows, 17, generator=g) * 2, -1)
            ids = zipf_rows(args.rows, args.vocab, 16, g) if base is None else \
                shared_rows(base, 16, g)
            clients.append(SparseRows(ids, logp[:, :16], logp[:, 16], args.vocab))
        present = torch.rand(args.clients, args.rows, generator=g) > 0.1
        present[0] = True
    out = {"clients": args.clients, "rows": args.rows, "vocab": args.vocab, "overlap": args.overlap,
           "baseline": {"source": str(args.baseline_src),
                        "commit": commit_of(args.baseline_src)},
           "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "rules": {}}
    for rule in [r for r in args.rules.split(",") if r]:
        params = {"trim": 0.2} if rule == "trimmed-mean" else {}
        best = {"baseline": float("inf"), "now": float("inf")}
        results = {}
        for _ in range(args.repeats):
            for name, mod in (("baseline", base_rules), ("now", rules)):
                t0 = time.perf_counter()
                results[name] = chunk_work(mod, clients, present, rule, params)
                best[name] = min(best[name], time.perf_counter() - t0)
        (c0, tv0, a0), (c1, tv1, a1) = results["baseline"], results["now"]
        same = all(torch.equal(x, y) for x, y in ((c0.ids, c1.ids), (c0.logp, c1.logp),
                                                   (c0.tail_logp, c1.tail_logp)))
        out["rules"][rule] = {
            "baseline_ms": round(best["baseline"] * 1000, 1),
            "now_ms": round(best["now"] * 1000, 1),
            "speedup": round(best["baseline"] / best["now"], 2),
            "same_rows": bool(same), "same_agreements": bool(torch.equal(a0, a1)),
            "max_tv_difference": float((tv0 - tv1).nan_to_num().abs().max())}
    # re-sparsifying the last rule's rows, as the writer does
    sparse = results["now"][0]
    best, encoded = {"baseline": float("inf"), "now": float("inf")}, {}
    for _ in range(args.repeats):
        for name, codec in (("baseline", base_topk.TopKCodec(16)), ("now", topk.TopKCodec(16))):
            t0 = time.perf_counter()
            encoded[name] = codec.encode_sparse(sparse)
            best[name] = min(best[name], time.perf_counter() - t0)
    out["encode_sparse"] = {
        "rule": rule, "baseline_ms": round(best["baseline"] * 1000, 1),
        "now_ms": round(best["now"] * 1000, 1),
        "speedup": round(best["baseline"] / best["now"], 2),
        "same_tensors": all(torch.equal(encoded["baseline"][n], encoded["now"][n])
                            for n in encoded["now"])}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
