"""Re-derive fd simulate's federated-distillation defaults on the validation split.

The rule, the sharpening and the number of rounds were chosen by test accuracy (the rounds
sweep, benchmarks/results/rounds/sweep.json). This runs fd alone (no baselines, no attacks)
for each configuration of the grid at several seeds, each for up to ``--rounds`` rounds, and
records the student's validation and test accuracy after every round; the chosen
configuration and number of rounds are those with the best mean validation accuracy (the
fewest rounds of equals). Test figures are printed beside them and never used to choose.

    python benchmarks/defaults_on_validation.py --out /tmp/defaults > defaults.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: the grid: 2 rules x 2 sharpenings = 4 configurations (FedAvg gets 4 too, headlines.py)
RULES = ("coverage", "confidence")
SHARPEN = (0.1, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-clients", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()
    from fdcli.stages.simulate import simulate

    runs = []
    for seed, (rule, sharpen) in itertools.product(range(args.seeds),
                                                   itertools.product(RULES, SHARPEN)):
        name = f"{rule}-sharpen{sharpen}-seed{seed}"
        started = time.perf_counter()
        done = args.out / name / "results.json"
        resumed = done.is_file()
        if resumed:  # resume: a run an earlier invocation finished
            found = json.loads(done.read_text())
        else:
            found = simulate(args.out / name, num_clients=args.num_clients, alpha=args.alpha,
                             rule=rule, sharpen=sharpen, rounds=args.rounds, baselines=(),
                             privacy=False, seed=seed, overwrite=True, progress=False,
                             log=lambda m: print(f"[{name}] {m}", file=sys.stderr,
                                                 flush=True))
        runs.append({"rule": rule, "sharpen": sharpen, "seed": seed,
                     "seconds": round(time.perf_counter() - started, 1)
                     if not resumed else None,
                     "validation": [r["student_validation_accuracy"] for r in found["rounds"]],
                     "test": [r["student_accuracy"] for r in found["rounds"]],
                     "cumulative_bytes": [r["cumulative_bytes"] for r in found["rounds"]]})
    table = []
    for rule, sharpen in itertools.product(RULES, SHARPEN):
        mine = [r for r in runs if r["rule"] == rule and r["sharpen"] == sharpen]
        for k in range(args.rounds):
            table.append({"rule": rule, "sharpen": sharpen, "rounds": k + 1,
                          "validation": sum(r["validation"][k] for r in mine) / len(mine),
                          "test": sum(r["test"][k] for r in mine) / len(mine)})
    chosen = max(table, key=lambda t: (t["validation"], -t["rounds"]))
    previous = next(t for t in table if (t["rule"], t["sharpen"], t["rounds"]) ==
                    ("coverage", 0.1, 2))
    print(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                      "grid": {"rule": list(RULES), "sharpen": list(SHARPEN),
                               "rounds": list(range(1, args.rounds + 1))},
                      "configurations": len(RULES) * len(SHARPEN),
                      "chosen_on_validation": chosen, "previous_default": previous,
                      "table": table, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
