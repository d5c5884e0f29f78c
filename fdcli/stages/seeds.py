"""``fd simulate --seeds N``: the whole comparison (partition, models, baselines) at N seeds,
combined into means, standard deviations and 95% intervals, with the paired differences that
the claims are about (fd minus each baseline, seed by seed).

Each seed's run is a complete simulation in ``out/seed-<s>``. A method that does not reach
the target accuracy in a seed is counted as such: bytes and seconds to target are summarised
over the seeds that reached it, beside how many did, never averaged as if the others had.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..outputs import fresh_dir
from ..results import Score, document, interval, merge


def _method_runs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's final scores, what it reached and its membership AUC in one run."""
    finals = {"fd": doc["student"], **doc["baselines"]}
    privacy = doc.get("privacy") or {}
    auc = {"fd": privacy.get("student", {}).get("auc"),
           **{k: privacy[k]["auc"] for k in finals if isinstance(privacy.get(k), dict)
              and "auc" in privacy[k]}}
    out = {}
    for name, final in finals.items():
        hit = doc["bytes_to_target"].get(name)
        curve = doc["curves"].get(name)
        out[name] = {"accuracy": final["accuracy"], "macro_f1": final["macro_f1"],
                     "auc": auc.get(name), "hit": hit,
                     "total_bytes": curve[-1]["total_bytes"] if curve else None,
                     "seconds": curve[-1].get("seconds") if curve else None}
    return out


def combine(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-method summaries and paired differences of runs at different seeds."""
    runs = [_method_runs(d) for d in docs]
    names = [n for n in runs[0] if all(n in r for r in runs)]
    methods: dict[str, Any] = {}
    for name in names:
        rows = [r[name] for r in runs]
        hits = [r["hit"] for r in rows if r["hit"] is not None]
        reached = [h for h in hits if h["reached"]]
        methods[name] = {
            "accuracy": interval([r["accuracy"] for r in rows]),
            "macro_f1": interval([r["macro_f1"] for r in rows]),
            "membership_auc": interval([r["auc"] for r in rows if r["auc"] is not None]),
            "total_bytes": interval([r["total_bytes"] for r in rows
                                     if r["total_bytes"] is not None]),
            "seconds": interval([r["seconds"] for r in rows if r["seconds"] is not None]),
            "target": {"seeds": len(hits), "reached": len(reached),
                       "bytes": interval([h["bytes"] for h in reached]),
                       "seconds": interval([h["seconds"] for h in reached
                                            if h.get("seconds") is not None]),
                       "cpu_seconds": interval([h["cpu_seconds"] for h in reached
                                                if h.get("cpu_seconds") is not None])}}
    paired: dict[str, Any] = {}
    for name in [n for n in names if n != "fd"]:
        both = [(r["fd"]["hit"], r[name]["hit"]) for r in runs
                if r["fd"]["hit"] and r[name]["hit"] and r["fd"]["hit"]["reached"]
                and r[name]["hit"]["reached"]]
        paired[name] = {
            "accuracy_difference": interval([r["fd"]["accuracy"] - r[name]["accuracy"]
                                             for r in runs]),
            "macro_f1_difference": interval([r["fd"]["macro_f1"] - r[name]["macro_f1"]
                                             for r in runs]),
            "bytes_to_target_ratio": interval([b["bytes"] / a["bytes"] for a, b in both]),
            "seconds_to_target_difference": interval([
                a["seconds"] - b["seconds"] for a, b in both
                if a.get("seconds") is not None and b.get("seconds") is not None]),
            "seeds_both_reached": len(both)}
    return {"methods": methods, "paired": paired}


def over_seeds(run: Callable[..., dict[str, Any]], out: str | Path, *, seeds: int,
               first_seed: int, overwrite: bool, log: Callable[[str], None],
               **settings) -> dict[str, Any]:
    """``run`` (the one-seed simulation) at ``seeds`` consecutive seeds into ``out/seed-<s>``;
    writes the combination to ``out/results.json``, ``out/report.md`` and
    ``out/accuracy_vs_bytes.png`` and returns it."""
    with fresh_dir(out, overwrite) as root:
        docs = []
        for i, s in enumerate(range(first_seed, first_seed + seeds)):
            log(f"seed {s} ({i + 1} of {seeds})")
            docs.append(run(root / f"seed-{s}", seed=s, seeds=1, overwrite=False, log=log,
                            **settings))
        return write_combined(root, docs)


def write_combined(root: Path, docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write the combination of one-seed results ``docs`` (runs in ``root/seed-<s>``) to
    ``root/results.json``, ``report.md`` and ``accuracy_vs_bytes.png``; return it. Also for
    runs made one seed at a time: ``write_combined(root, [json.load(...) for each seed])``."""
    from ..report import plot_seeds, seeds_markdown

    merged = merge([Score.from_json(v, f"seed-{d['config']['seed']}: scores[{i}]")
                    for i, v in enumerate(d["scores"])] for d in docs)
    config = {**docs[0]["config"], "seeds": [d["config"]["seed"] for d in docs]}
    config.pop("seed", None)
    results = {"fd_version": __version__, "config": config,
               "runs": [f"seed-{d['config']['seed']}/results.json" for d in docs],
               "target_accuracy": [d["target_accuracy"] for d in docs],
               "over_seeds": combine(docs),
               "curves_by_seed": [d["curves"] for d in docs]}
    doc = document("classification", results, merged)
    (root / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (root / "report.md").write_text(seeds_markdown(doc))
    plot_seeds(doc, root / "accuracy_vs_bytes.png")
    return doc
