"""Token consensus quality with poisoned clients, for the robust aggregation rules, as JSON.

One causal-LM federation is trained once (``fd simulate --task causal-lm`` machinery: 10
institutions, each one standard-library package, tiny GPT-2/Llama specialists, one round);
its clean top-16 token bundles are then poisoned (:mod:`fdcli.poison`: ``random``,
``shuffled``, ``overconfident``) at each fraction, aggregated per token with every rule, and
each consensus is scored by its perplexity on the proxy text's actual next tokens and how
often its top id is that token (the simulation can, a coordinator cannot), and by the
clients the aggregate's outlier report flagged. With ``--students`` a student is distilled
from each consensus too and scored by its geometric-mean perplexity over the domains'
held-out text::

    python benchmarks/token_poison_table.py --out /tmp/tpoison > \
        benchmarks/results/token_poison_table.json
    python benchmarks/token_poison_table.py --markdown benchmarks/results/token_poison_table.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

RULES = ("confidence", "mean", "median", "trimmed-mean")


def _setup(out: Path, args) -> dict:
    from fdcli.stages.simulate_lm import simulate_lm

    sim = out / "sim"
    if not (sim / "results.json").is_file():
        simulate_lm(sim, num_clients=args.clients, compare_rules=(), rule="mean",
                    client_chars=args.client_chars, proxy_chars=args.proxy_chars,
                    epochs=args.epochs, distill_epochs=args.epochs, fedavg_rounds=0, rounds=1,
                    privacy=False, seed=args.seed, overwrite=True, progress=False,
                    log=lambda m: print(m, file=sys.stderr, flush=True))
    return json.loads((sim / "results.json").read_text())


def run(args) -> dict:
    from fdcli.data import load_local
    from fdcli.lm import load_lm, text_blocks
    from fdcli.poison import poison_bundle, poisoned_clients
    from fdcli.stages.aggregate import aggregate
    from fdcli.stages.lm import distill_lm, token_metrics
    from fdcli.stages.token_evidence import teacher_next_tokens

    out = Path(args.out)
    start = time.perf_counter()
    results = _setup(out, args)
    sim, cfg = out / "sim", results["config"]
    tok, proxy = sim / "tokenizer", sim / "data" / "proxy.jsonl"
    student = sim / "configs" / f"{cfg['student']}.json"
    shared = load_lm(student, tokenizer=tok)

    def blocks_of(path: Path) -> list[list[int]]:
        return text_blocks(load_local(path, whole_text_files=True), str(path),
                           shared.tokenizer, max_length=cfg["max_length"]).blocks

    proxy_blocks = blocks_of(proxy)
    tests = {d: blocks_of(p) for d, p in
             ((d, next((sim / "data").glob(f"test-{d}.jsonl"))) for d in results["domains"])}
    clean = [sim / "bundles" / f"client-{i}" for i in range(args.clients)]
    scenarios = [("clean", 0.0)] + [(k, f) for f in args.fractions for k in args.kinds]
    rows = []
    for kind, fraction in scenarios:
        bad = poisoned_clients(args.clients, fraction, args.poison_seed) \
            if kind != "clean" else []
        here = out / f"seed{args.poison_seed}" / f"{kind}-{fraction:g}"
        if here.exists():
            shutil.rmtree(here)
        bundles = []
        for i, src in enumerate(clean):
            dst = here / "bundles" / src.name
            shutil.copytree(src, dst)
            if i in bad:
                poison_bundle(dst, kind, seed=args.poison_seed + i)
            bundles.append(dst)
        for rule in args.rules:
            teacher = here / "teachers" / rule
            t0 = time.perf_counter()
            m = aggregate(bundles, teacher, rule=rule, k=16, seed=args.seed, progress=False)
            quality = teacher_next_tokens(teacher, proxy_blocks)
            row = {"kind": kind, "fraction": fraction,
                   "poisoned": [f"client-{i}" for i in bad], "rule": rule,
                   "teacher_proxy_perplexity": round(quality["perplexity"], 3),
                   "teacher_proxy_accuracy": round(quality["accuracy"], 4),
                   "flagged": [p["client_id"] for p in m.provenance if p["outlier"]],
                   "aggregate_s": round(time.perf_counter() - t0, 1)}
            if args.students:
                model = here / "students" / rule
                distill_lm(student, proxy, teacher, model, tokenizer=tok,
                           epochs=args.epochs, learning_rate=2e-3, batch_size=16,
                           seed=args.seed, progress=False)
                lm = load_lm(model)
                ppl = [token_metrics(lm, b, 16)["perplexity"] for b in tests.values()]
                row["student_mean_ppl"] = round(math.exp(sum(map(math.log, ppl)) / len(ppl)), 3)
            rows.append(row)
            print(json.dumps(row), flush=True, file=sys.stderr)
    return {"config": {"clients": args.clients, "client_chars": args.client_chars,
                       "proxy_chars": args.proxy_chars, "epochs": args.epochs,
                       "seed": args.seed, "poison_seed": args.poison_seed,
                       "domains": list(results["domains"]),
                       "architectures": cfg["architectures"], "k": cfg["k"]},
            "specialists_mean_ppl": [s["mean_ppl"] for s in results["specialists"]],
            "rows": rows, "seconds": round(time.perf_counter() - start, 1)}


def markdown(results: dict) -> str:
    """The consensus's proxy perplexity / next-token accuracy per poison level and rule (the
    accuracy's change from the clean consensus in brackets), and how many of the poisoned
    clients the outlier report flagged."""
    rules = list(dict.fromkeys(r["rule"] for r in results["rows"]))
    cell = {(r["kind"], r["fraction"], r["rule"]): r for r in results["rows"]}
    lines = ["| poison | " + " | ".join(rules) + " | poisoned flagged (honest flagged) |",
             "|---" * (len(rules) + 2) + "|"]
    for kind, fraction in dict.fromkeys((r["kind"], r["fraction"]) for r in results["rows"]):
        got = [cell[(kind, fraction, q)] for q in rules]
        clean = [cell[("clean", 0.0, q)]["teacher_proxy_accuracy"] for q in rules]
        text = [f"{g['teacher_proxy_perplexity']:.0f} / {g['teacher_proxy_accuracy']:.3f}" + (
            f" ({g['teacher_proxy_accuracy'] - c:+.3f})" if kind != "clean" else "")
            for g, c in zip(got, clean)]
        first = got[0]
        caught = len(set(first["flagged"]) & set(first["poisoned"]))
        honest = len(set(first["flagged"]) - set(first["poisoned"]))
        name = "none" if kind == "clean" else f"{kind} {fraction:.0%}"
        lines.append(f"| {name} | " + " | ".join(text)
                     + f" | {caught} of {len(first['poisoned'])} ({honest}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Work folder (the trained federation is "
                                                 "kept there and reused)")
    parser.add_argument("--markdown", type=Path, help="Print the table of a results file")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--client-chars", type=int, default=60_000)
    parser.add_argument("--proxy-chars", type=int, default=200_000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--kinds", nargs="+", default=["random", "shuffled", "overconfident"])
    parser.add_argument("--rules", nargs="+", default=list(RULES))
    parser.add_argument("--students", action="store_true",
                        help="Distill and score a student from every consensus too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poison-seed", type=int, default=0)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    if args.out is None:
        parser.error("--out is required to run the benchmark")
    print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()
