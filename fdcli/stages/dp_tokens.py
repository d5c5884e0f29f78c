"""What DP costs a causal-LM federation (``fd simulate --task causal-lm --dp-epsilons``):
at each epsilon every institution trains its specialist with DP-SGD (:mod:`fdcli.dp`, one
block of one document as the unit), emits, and the student is aggregated and distilled as
in the non-private first round; scored and attacked as the non-private models are
(docs/privacy.md).

The student needs no mechanism of its own: it learns from the proxy text (public) and the
DP specialists' bundles, post-processing of DP models, so it inherits their guarantee.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .federation import dir_bytes


def token_dp_variants(root: Path, epsilons: Sequence[float], *, clients: int,
                      train: Callable[..., dict[str, Any]],
                      emit: Callable[[Path, Path, int], Any],
                      combine: Callable[[list[Path], Path, Path], Any],
                      score: Callable[[Path], dict[str, Any]],
                      attack: Callable[[list[Path], Path], dict[str, Any]] | None,
                      log=print) -> list[dict[str, Any]]:
    """One row per epsilon, run into ``root/epsilon-E``: ``train(i, out, epsilon)`` trains
    client i's DP specialist, ``emit(model, bundle, i)`` writes its bundle,
    ``combine(bundles, teacher, student)`` aggregates and distills, ``score(model)`` gives
    ``mean_ppl``, and ``attack(specialists, student)`` (None: no attacks) the membership
    inference report of :func:`~fdcli.stages.token_evidence.privacy_report`."""
    rows = []
    for epsilon in epsilons:
        base = root / f"epsilon-{epsilon:g}"
        started = time.perf_counter()
        log(f"DP-SGD specialists at epsilon {epsilon:g}")
        models, bundles, spent, noise, groups, perplexities = [], [], [], [], [], []
        for i in range(clients):
            model, bundle = base / "specialists" / f"client-{i}", base / "bundles" / f"client-{i}"
            guarantee = train(i, model, epsilon)["privacy"]
            emit(model, bundle, i)
            models.append(model)
            bundles.append(bundle)
            spent.append(guarantee["epsilon"])
            noise.append(guarantee["noise_multiplier"])
            groups.append(guarantee["blocks_per_document"])
            perplexities.append(score(model)["mean_ppl"])
        student = base / "student"
        combine(bundles, base / "teacher", student)
        row = {"epsilon": epsilon, "epsilon_spent_max": max(spent),
               "noise_multipliers": noise, "blocks_per_document": groups,
               "specialists_mean_ppl": round(math.exp(
                   sum(math.log(p) for p in perplexities) / len(perplexities)), 3),
               "student": score(student),
               "uploaded_bytes": sum(dir_bytes(b) for b in bundles)}
        if attack is not None:
            report = attack(models, student)
            row["attack"] = {"specialists_mean_auc": report["specialists_mean_auc"],
                             "student_auc": report["student"]["auc"],
                             "student_reference_auc": report["student"]["reference"]["auc"]}
        row["seconds"] = round(time.perf_counter() - started, 2)
        rows.append(row)
    return rows


def dp_lines(results: dict[str, Any]) -> list[str]:
    """report.md's table of the DP variants beside the non-private first round."""
    if not results.get("dp"):
        return []
    first = results["rounds"][0]
    attacks = results.get("privacy", {})
    plain_auc = attacks.get("specialists_mean_auc")
    # the attacks are on the last round's student: round 1's only in a one-round run
    student_auc = attacks.get("student", {}).get("auc") if len(results["rounds"]) == 1 \
        else None
    lines = ["", "## DP-SGD specialists (one-shot; docs/privacy.md)", "",
             "| specialists | student perplexity | specialists' perplexity (geometric mean) "
             "| specialists' attack AUC (mean) | student attack AUC | bytes up |",
             "|---|---|---|---|---|---|"]

    def auc(value) -> str:
        return "" if value is None else f"{value:.3f}"

    lines.append(f"| no DP (round 1) | {first['student']['mean_ppl']:.2f} | "
                 f"{first['specialists_mean_ppl']:.2f} | {auc(plain_auc)} | {auc(student_auc)} | "
                 f"{first['uploaded_bytes']:,} |")
    for row in results["dp"]:
        a = row.get("attack", {})
        lines.append(f"| epsilon {row['epsilon']:g} (spent {row['epsilon_spent_max']:.2f}) | "
                     f"{row['student']['mean_ppl']:.2f} | {row['specialists_mean_ppl']:.2f} | "
                     f"{auc(a.get('specialists_mean_auc'))} | {auc(a.get('student_auc'))} | "
                     f"{row['uploaded_bytes']:,} |")
    return lines
