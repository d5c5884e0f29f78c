"""Per-round figures of ``fd simulate`` runs, as JSON: for each run its settings (rule,
sharpening, digest weight, round epochs, schedule, slices, start model) and, per round, the
teacher's accuracy on the proxy split, the student's test accuracy, the specialists' mean
test accuracy and the cumulative bytes (up and down)::

    python benchmarks/rounds_table.py sim-a sim-b ... > table.json

Each argument is an ``fd simulate`` output folder (or its results.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETTINGS = ("num_clients", "alpha", "rule", "sharpen", "rounds", "round_epochs",
            "round_distill_epochs", "digest_weight", "schedule", "proxy_slices",
            "from_student")


def summary(path: Path) -> dict:
    results = json.loads((path / "results.json" if path.is_dir() else path).read_text())
    cfg = results["config"]
    out = {"run": path.name if path.is_dir() else path.parent.name,
           "data": cfg["data"], **{k: cfg.get(k) for k in SETTINGS},
           "rounds_table": [{"round": r["round"],
                             "teacher_proxy_accuracy": round(r["teacher_proxy_accuracy"], 4),
                             "student_accuracy": round(r["student_accuracy"], 4),
                             "specialists_mean_accuracy": round(r["specialists_mean_accuracy"], 4),
                             "cumulative_bytes": r["cumulative_bytes"]}
                            for r in results["rounds"]]}
    for name in ("fedavg", "fedavg_8bit", "centralized"):
        if name in results["baselines"]:
            out[name] = round(results["baselines"][name]["accuracy"], 4)
    if results.get("bytes_to_student_accuracy"):
        out["bytes_to_student_accuracy"] = {k: v["bytes"] for k, v in
                                            results["bytes_to_student_accuracy"].items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    print(json.dumps([summary(p) for p in args.runs], indent=1))


if __name__ == "__main__":
    main()
