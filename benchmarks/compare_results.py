"""Compare the headline figures of two ``fd simulate`` runs (for example the same command on
two versions of fd) and print them as JSON, with each figure's difference.

    python benchmarks/compare_results.py BEFORE/results.json AFTER/results.json

Reads the results of any task, with or without the typed ``scores`` of fdcli.results (runs
of older versions have none): classification accuracy and bytes, causal-lm mean
perplexity, seq2seq BLEU/chrF, embedding linear-probe and k-NN accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The figures a reader compares, by where each task's results keep them."""
    out: dict[str, float] = {}
    if "probes" in results:  # embedding
        for name, p in results["probes"].items():
            out[f"{name}.linear_probe_accuracy"] = p["linear_probe_accuracy"]
            out[f"{name}.knn_accuracy"] = p["knn_accuracy"]
        return out
    student = results["student"]
    if "accuracy" in student:  # classification
        out["student.accuracy"] = student["accuracy"]
        for name, b in results.get("baselines", {}).items():
            out[f"{name}.accuracy"] = b["accuracy"]
        out["bytes.fd.total"] = results["bytes"]["fd"]["total"]
        for name in ("fedavg", "fedavg_8bit"):
            if name in results["bytes"]:
                out[f"bytes.{name}.total"] = results["bytes"][name]["total"]
        return out
    if "mean_ppl" in student:  # causal-lm
        for name in ("student", "proxy_only", "centralized"):
            out[f"{name}.mean_ppl"] = results[name]["mean_ppl"]
        for name, b in results.get("baselines", {}).items():
            out[f"{name}.mean_ppl"] = b["mean_ppl"]
    else:  # seq2seq
        for name in ("student", "proxy_only", "centralized"):
            for metric in ("bleu", "chrf", "perplexity"):
                out[f"{name}.{metric}"] = results[name]["union"][metric]
        for name, b in results.get("baselines", {}).items():
            out[f"{name}.bleu"] = b["union"]["bleu"]
    out["bytes.uploaded_total"] = results["bytes"]["uploaded_total"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before = headline(json.loads(args.before.read_text()))
    after = headline(json.loads(args.after.read_text()))
    figures = {k: {"before": before.get(k), "after": after.get(k),
                   "difference": (after[k] - before[k]) if k in before and k in after else None}
               for k in sorted(set(before) | set(after))}
    print(json.dumps({"before": str(args.before), "after": str(args.after),
                      "identical": before == after, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
