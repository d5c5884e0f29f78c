"""Communication curves, bytes-to-target and the simulation report (report.md and the
accuracy-vs-bytes plot). Pure functions of the results, apart from the two writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: a curve is a list of points, each ``{"round", "uploaded_bytes", "total_bytes", "accuracy",
#: "macro_f1"}`` with cumulative byte counts (uploads; uploads plus downloads).
Curve = list[dict[str, Any]]


def bytes_to_target(curve: Curve, target: float) -> dict[str, Any]:
    """The first point of ``curve`` whose accuracy reaches ``target``: its round and its
    cumulative bytes (``bytes`` counts both directions); ``reached`` False (bytes None) and
    the best accuracy seen when no point does."""
    for point in curve:
        if point["accuracy"] >= target:
            return {"reached": True, "round": point["round"], "bytes": point["total_bytes"],
                    "uploaded_bytes": point["uploaded_bytes"], "accuracy": point["accuracy"]}
    best = max((p["accuracy"] for p in curve), default=None)
    return {"reached": False, "round": None, "bytes": None, "uploaded_bytes": None,
            "best_accuracy": best}


def ratios_to(hits: dict[str, dict[str, Any]], base: str) -> dict[str, float]:
    """Each method's bytes-to-target (from :func:`bytes_to_target`) over ``base``'s, where
    both reached the target."""
    ref = hits.get(base, {}).get("bytes")
    if not ref:
        return {}
    return {name: h["bytes"] / ref for name, h in hits.items()
            if name != base and h["bytes"] is not None}


def rounds_curve(rounds: list[dict[str, Any]], traffic: list[dict[str, int]]) -> Curve:
    """A FedAvg curve: ``rounds`` holds the global model's scores after each round (round 0
    first), ``traffic`` the bytes of each round (see :func:`fdcli.fedavg.bytes_per_round`)."""
    by_round = {t["round"]: t for t in traffic}
    up = total = 0
    curve = []
    for r in rounds:
        t = by_round.get(r["round"], {"up_bytes": 0, "down_bytes": 0})
        up += t["up_bytes"]
        total += t["up_bytes"] + t["down_bytes"]
        curve.append({"round": r["round"], "uploaded_bytes": up, "total_bytes": total,
                      "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]})
    return curve


def one_shot_curve(uploaded: int, downloaded: int, scores: dict[str, float]) -> Curve:
    """Federated distillation's curve: one upload of bundles, one student."""
    return [{"round": 1, "uploaded_bytes": uploaded, "total_bytes": uploaded + downloaded,
             "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}]


LABELS = {"standalone": "standalone (each specialist alone, mean)",
          "standalone_student": "standalone student (one teacher)",
          "fedavg": "fedavg (Flower, fp32)", "fedavg_8bit": "fedavg (Flower, 8-bit)"}


def megabytes(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.3f} MB"


def figure(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report_markdown(results: dict[str, Any]) -> str:
    """The tables of ``results`` (from :func:`fdcli.stages.simulate.simulate`) as Markdown."""
    cfg = results["config"]
    lines = [f"# fd simulate: {cfg['num_clients']} clients, alpha {cfg['alpha']}, "
             f"{cfg['data']}", "",
             f"Test split: {results['partition']['sizes']['test']} examples no client saw. "
             f"Target accuracy: {figure(results['target_accuracy'])} "
             f"({cfg['target_fraction']:.0%} of centralized; none without it).", "",
             "## Accuracy", "", "| method | accuracy | macro-F1 |", "|---|---|---|",
             f"| fd student ({cfg['rule']}) | {figure(results['student']['accuracy'])} | "
             f"{figure(results['student']['macro_f1'])} |"]
    for name, b in results["baselines"].items():
        lines.append(f"| {LABELS.get(name, name)} | {figure(b['accuracy'])} | "
                     f"{figure(b['macro_f1'])} |")
    lines += ["", f"The aggregated teacher's accuracy on the proxy split: "
                  f"{figure(results['student'].get('teacher_proxy_accuracy'))}."]
    if len(results.get("rounds") or []) > 1:
        lines += ["", "## Rounds", "",
                  "| round | teacher on the proxy | student | specialists (mean) | up | down "
                  "| cumulative (up + down) |", "|---|---|---|---|---|---|---|"]
        for r in results["rounds"]:
            lines.append(f"| {r['round']} | {figure(r['teacher_proxy_accuracy'])} | "
                         f"{figure(r['student_accuracy'])} | "
                         f"{figure(r['specialists_mean_accuracy'])} | "
                         f"{megabytes(r['uploaded_bytes'])} | {megabytes(r['downloaded_bytes'])} | "
                         f"{megabytes(r['cumulative_bytes'])} |")
    lines += ["", "## Communication", "",
              "| method | rounds | uploaded | total (up + down) | bytes to target | round |",
              "|---|---|---|---|---|---|"]
    for name, curve in results["curves"].items():
        hit = results["bytes_to_target"].get(name) or {"reached": False}
        lines.append(f"| {name} | {curve[-1]['round']} | {megabytes(curve[-1]['uploaded_bytes'])} "
                     f"| {megabytes(curve[-1]['total_bytes'])} | "
                     f"{megabytes(hit['bytes']) if hit['reached'] else 'not reached'} | "
                     f"{hit['round'] if hit['reached'] else '–'} |")
    ratios = results.get("bytes_ratio_to_fd") or {}
    if ratios:
        lines += ["", "Bytes to target relative to fd: " + ", ".join(
            f"{k} {v:.1f}x" for k, v in ratios.items()) + "."]
    fd = results["curves"]["fd"][-1]
    matched = {k: v for k, v in results["bytes_to_student_accuracy"].items() if k != "fd"}
    lines += ["", f"Bytes to reach the fd student's accuracy ({figure(fd['accuracy'])}; fd sent "
                  f"{megabytes(fd['total_bytes'])}): " + ", ".join(
                      f"{k} {megabytes(v['bytes'])} (round {v['round']})" if v["reached"]
                      else f"{k} never" for k, v in matched.items()) + "."]
    lines += _privacy_table(results["privacy"]) if results["privacy"] else []
    lines += ["", "## Time and memory", "", "| stage | wall s | peak RSS MiB |", "|---|---|---|"]
    for name, t in results["timing"].items():
        lines.append(f"| {name} | {t['wall_s']:.1f} | {t['peak_rss_mb']:.0f} |")
    if results["target_accuracy"] is not None:
        lines += ["", "![accuracy against cumulative bytes, up and down](accuracy_vs_bytes.png)"]
    return "\n".join(lines) + "\n"


def _privacy_table(p: dict[str, Any]) -> list[str]:
    lines = ["", "## Membership inference (loss threshold; reference attack in brackets)", "",
             "| model | AUC | TPR at 1% FPR | TPR at 0.1% FPR |", "|---|---|---|---|"]

    def row(name: str, a: dict[str, Any]) -> None:
        lines.append(f"| {name} | {figure(a['auc'])} ({figure(a['reference']['auc'])}) | "
                     f"{figure(a['tpr_at_1pct_fpr'])} | {figure(a['tpr_at_01pct_fpr'])} |")

    for s in p["specialists"][:20]:
        row(f"specialist {s['client_id']}", s)
    if len(p["specialists"]) > 20:
        lines.append(f"| … {len(p['specialists']) - 20} more specialists (results.json) | | | |")
    for name in ("student", "fedavg", "fedavg_8bit", "centralized"):
        if name in p:
            row(name, p[name])
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    """Accuracy against cumulative bytes (up and down), one line or point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, curve) in enumerate(results["curves"].items()):
        points = [p for p in curve if p["total_bytes"] > 0]
        xs, ys = [p["total_bytes"] for p in points], [p["accuracy"] for p in points]
        if len(points) == 1:
            ax.scatter(xs, ys, s=60, zorder=3, color=f"C{i}", label=name)
        else:
            ax.plot(xs, ys, marker=".", color=f"C{i}", label=name)
    ax.axhline(results["target_accuracy"], color="grey", linestyle="--", linewidth=1,
               label="target")
    central = results["baselines"].get("centralized")
    if central:
        ax.axhline(central["accuracy"], color="black", linestyle=":", linewidth=1,
                   label="centralized")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes sent, up and down, all clients")
    ax.set_ylabel("test accuracy")
    cfg = results["config"]
    ax.set_title(f"{cfg['num_clients']} clients, alpha {cfg['alpha']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
