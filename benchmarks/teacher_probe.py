"""How good can a teacher built from these bundles be? Accuracy on the labelled proxy split of
several ways to combine the specialists' bundles of an ``fd simulate`` output folder.

The student rarely beats its teacher, so this separates a gap that comes from the specialists
and the combination rule from one that comes from distillation::

    python benchmarks/teacher_probe.py sim-alpha0.1

Combinations (probabilities over clients, per example): ``mean``; ``confidence``
(softmax over clients of max-probability); ``class_count_weighted`` (the ``coverage`` rule
without its prior correction: client k's vote for class c weighted by its share of the
federation's training examples of c, read from each specialist's fd.json);
``prior_corrected`` (the ``coverage`` rule: each client's probabilities divided by its
smoothed label prior before mixing, then count-weighted). ``--round R`` probes round R's
bundles of a simulation with rounds. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path, help="an fd simulate output folder")
    parser.add_argument("--round", type=int, default=1, help="which round's bundles")
    args = parser.parse_args()

    import datasets

    from fdcli.bundle import read_bundle
    from fdcli.rules import RULES

    sim = args.sim
    base = sim if args.round == 1 else sim / "rounds" / f"round-{args.round}"
    labels = torch.tensor(datasets.load_from_disk(str(sim / "partition" / "proxy-labels"))["label"])
    bundles = sorted((base / "bundles").iterdir(), key=lambda p: int(p.name.split("-")[-1]))
    probs, counts, ids = [], [], None
    for b in bundles:
        block = read_bundle(b).read_all()
        if ids is not None and not torch.equal(ids, block.example_ids):
            raise SystemExit(f"{b}: covers other proxy examples than {bundles[0]}")
        ids = block.example_ids
        probs.append(block.dense().double().exp())
        meta = json.loads((base / "specialists" / b.name / "fd.json").read_text())
        counts.append([meta["label_histogram"][n] for n in meta["label_names"]])
    p = torch.stack(probs)                                # [clients, examples, classes]
    n = torch.tensor(counts, dtype=torch.float64)         # [clients, classes]
    truth = labels[ids]

    def accuracy(q: torch.Tensor) -> float:
        return round(float((q.argmax(-1) == truth).double().mean()), 4)

    present = torch.ones(p.shape[:2], dtype=torch.bool)
    print(json.dumps({
        "sim": str(sim), "round": args.round, "clients": len(bundles),
        "proxy_examples": len(ids), "best_single_client": max(accuracy(q) for q in p),
        "mean": accuracy(RULES["mean"](p, present)),
        "confidence": accuracy(RULES["confidence"](p, present, measure="max", tau=1.0)),
        "entropy_reduction": accuracy(RULES["entropy-reduction"](p, present)),
        "class_count_weighted": accuracy(RULES["coverage"](p, present, n,
                                                           prior_correction=False)),
        "prior_corrected": accuracy(RULES["coverage"](p, present, n)),
    }))


if __name__ == "__main__":
    main()
