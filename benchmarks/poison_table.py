"""Student accuracy with poisoned clients, for every aggregation rule, as JSON.

One federation is trained once (``fd simulate`` machinery: scikit-learn's digits, 10 clients,
Dirichlet alpha 0.5, tiny ViT/ResNet specialists, one round); its clean bundles are then
poisoned (:mod:`fdcli.poison`) at each fraction and kind, aggregated with every rule, and a
student is distilled from each teacher and scored on the test split. The same seed, student
and settings throughout, so the rows differ only in the teacher::

    python benchmarks/poison_table.py --out /tmp/poison > benchmarks/results/poison_table.json
    python benchmarks/poison_table.py --out /tmp/poison --poison-seed 1 > poison_table_seed1.json
    python benchmarks/poison_table.py --markdown poison_table.json poison_table_seed1.json

Each row: kind, fraction, poisoned clients, rule, the teacher's accuracy on the (labelled)
proxy split, the student's test accuracy and macro-F1, and the clients the aggregate's
outlier report flagged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

RULES = ("confidence", "mean", "entropy-reduction", "weighted", "coverage", "median",
         "trimmed-mean")


def _setup(out: Path, args) -> dict:
    from fdcli.stages.simulate import simulate

    sim = out / "sim"
    if not (sim / "results.json").is_file():
        simulate(sim, num_clients=args.clients, alpha=args.alpha, rule="mean",
                 epochs=args.epochs, distill_epochs=args.distill_epochs, rounds=1,
                 baselines=["centralized"], privacy=False, sharpen=None, seed=args.seed,
                 overwrite=True, progress=False, log=lambda m: None)
        # coverage needs declared label counts: re-emit with them, as a client would
    return json.loads((sim / "results.json").read_text())


def _bundles(sim: Path, clients: int) -> list[Path]:
    """Clean bundles that declare their label counts (for the coverage rule)."""
    from fdcli.stages.emit import emit_logits

    out = []
    for i in range(clients):
        path = sim / "declared" / f"client-{i}"
        if not path.is_dir():
            emit_logits(sim / "specialists" / f"client-{i}", sim / "partition" / "proxy", path,
                        client_id=f"client-{i}", declare_label_counts=True, progress=False)
        out.append(path)
    return out


def run(args) -> dict:
    from fdcli.poison import poison_bundle, poisoned_clients
    from fdcli.stages.aggregate import aggregate
    from fdcli.stages.distill import distill
    from fdcli.stages.evaluate import evaluate
    from fdcli.stages.federation import accuracy_on

    out = Path(args.out)
    start = time.perf_counter()
    sim_results = _setup(out, args)
    sim = out / "sim"
    clean = _bundles(sim, args.clients)
    parts = sim / "partition"
    student = sim / "configs" / f"{sim_results['config']['student']}.json"
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
            m = aggregate(bundles, teacher, rule=rule, seed=args.seed, progress=False)
            t0 = time.perf_counter()
            distill(student, parts / "proxy", teacher, here / "students" / rule,
                    temperature=2.0, epochs=args.distill_epochs, learning_rate=2e-3,
                    batch_size=32, seed=args.seed, progress=False)
            scores = evaluate(here / "students" / rule, parts / "test")
            rows.append({"kind": kind, "fraction": fraction,
                         "poisoned": [f"client-{i}" for i in bad], "rule": rule,
                         "teacher_proxy_accuracy": round(accuracy_on(
                             teacher, parts / "proxy-labels"), 4),
                         "student_accuracy": round(scores["accuracy"], 4),
                         "student_macro_f1": round(scores["macro_f1"], 4),
                         "flagged": [p["client_id"] for p in m.provenance if p["outlier"]],
                         "distill_s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True, file=__import__("sys").stderr)
    return {"config": {"clients": args.clients, "alpha": args.alpha, "epochs": args.epochs,
                       "distill_epochs": args.distill_epochs, "seed": args.seed,
                       "poison_seed": args.poison_seed,
                       "student": sim_results["config"]["student"],
                       "architectures": sim_results["config"]["architectures"]},
            "specialists_accuracy": [s["accuracy"] for s in sim_results["specialists"]],
            "centralized_accuracy": sim_results["baselines"]["centralized"]["accuracy"],
            "rows": rows, "seconds": round(time.perf_counter() - start, 1)}


def markdown(runs: list[dict]) -> str:
    """Student accuracy per poison level and rule, the mean over ``runs`` (poison seeds),
    with the change from the clean student; the worst run's change in brackets when there
    are several."""
    cells: dict[tuple, list[float]] = {}
    for results in runs:
        for r in results["rows"]:
            cells.setdefault((r["kind"], r["fraction"], r["rule"]), []).append(
                r["student_accuracy"])
    rules = list(dict.fromkeys(r["rule"] for r in runs[0]["rows"]))
    clean = {q: cells[("clean", 0.0, q)] for q in rules}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines = ["| poison | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|",
             "| none | " + " | ".join(f"{mean(clean[q]):.3f}" for q in rules) + " |"]
    for kind, fraction in dict.fromkeys((k, f) for k, f, _ in cells if k != "clean"):
        row = []
        for q in rules:
            got = cells[(kind, fraction, q)]
            deltas = [g - c for g, c in zip(got, clean[q])]
            worst = f" [{min(deltas):+.3f}]" if len(deltas) > 1 else ""
            row.append(f"{mean(got):.3f} ({mean(deltas):+.3f}){worst}")
        lines.append(f"| {kind} {fraction:.0%} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Work folder (the trained federation is "
                                                 "kept there and reused).")
    parser.add_argument("--markdown", type=Path, nargs="+",
                        help="Print results files (one per poison seed) as one table.")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--epochs", type=float, default=60)
    parser.add_argument("--distill-epochs", type=float, default=30)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--kinds", nargs="+", default=["random", "flip", "overconfident"])
    parser.add_argument("--rules", nargs="+", default=list(RULES))
    parser.add_argument("--seed", type=int, default=0, help="Federation and student seed.")
    parser.add_argument("--poison-seed", type=int, default=0,
                        help="Which clients are poisoned (fdcli.poison.poisoned_clients).")
    args = parser.parse_args()
    if args.markdown:
        print(markdown([json.loads(p.read_text()) for p in args.markdown]))
        return
    print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()
