"""Communication curves, bytes-to-target and the simulation report (report.md and the
accuracy-vs-bytes plot). Pure functions of the results, apart from the two writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: a curve is a list of points, each ``{"round", "uploaded_bytes", "total_bytes", "accuracy",
#: "macro_f1"}`` with cumulative byte counts (uploads; uploads plus downloads).
Curve = list[dict[str, Any]]


def bytes_to_target(curve: Curve, target: float) -> dict[str, Any]:
    """The first point of ``curve`` whose accuracy reaches ``target``: its round, its
    cumulative bytes (``bytes`` counts both directions) and its cumulative wall ``seconds``
    and CPU ``cpu_seconds`` (None for a curve without times); ``reached`` False (bytes and
    seconds None) and the best accuracy seen when no point does."""
    for point in curve:
        if point["accuracy"] >= target:
            return {"reached": True, "round": point["round"], "bytes": point["total_bytes"],
                    "uploaded_bytes": point["uploaded_bytes"],
                    "seconds": point.get("seconds"), "cpu_seconds": point.get("cpu_seconds"),
                    "accuracy": point["accuracy"]}
    best = max((p["accuracy"] for p in curve), default=None)
    return {"reached": False, "round": None, "bytes": None, "uploaded_bytes": None,
            "seconds": None, "cpu_seconds": None, "best_accuracy": best}


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
    first; with its cumulative ``seconds`` and ``validation_accuracy`` where measured),
    ``traffic`` the bytes of each round (see :func:`fdcli.fedavg.bytes_per_round`)."""
    by_round = {t["round"]: t for t in traffic}
    up = total = 0
    curve = []
    for r in rounds:
        t = by_round.get(r["round"], {"up_bytes": 0, "down_bytes": 0})
        up += t["up_bytes"]
        total += t["up_bytes"] + t["down_bytes"]
        curve.append({"round": r["round"], "uploaded_bytes": up, "total_bytes": total,
                      "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                      **{k: r[k] for k in ("seconds", "cpu_seconds", "validation_accuracy")
                         if k in r}})
    return curve


def one_shot_curve(uploaded: int, downloaded: int, scores: dict[str, float]) -> Curve:
    """Federated distillation's curve: one upload of bundles, one student."""
    return [{"round": 1, "uploaded_bytes": uploaded, "total_bytes": uploaded + downloaded,
             "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}]


LABELS = {"standalone": "standalone (each specialist alone, mean)",
          "standalone_student": "standalone student (one teacher)",
          "fedavg": "fedavg (Flower, fp32)", "fedavg_8bit": "fedavg (Flower, 8-bit)",
          "fedprox": "fedprox (Flower)"}


def megabytes(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.3f} MB"


def figure(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} s"


def _times(hit: dict[str, Any]) -> str:
    """Wall seconds to target, and CPU seconds where measured."""
    cpu = hit.get("cpu_seconds")
    return seconds(hit.get("seconds")) + (f" ({cpu:.0f} CPU s)" if cpu is not None else "")


def report_markdown(results: dict[str, Any]) -> str:
    """The tables of ``results`` (from :func:`fdcli.stages.simulate.simulate`) as Markdown."""
    cfg = results["config"]
    lines = [f"# fd simulate: {cfg['num_clients']} clients, alpha {cfg['alpha']}, "
             f"{cfg['data']}", "",
             f"Test split: {results['partition']['sizes']['test']} examples no client saw. "
             f"Target accuracy: {figure(results['target_accuracy'])} "
             f"({cfg['target_fraction']:.0%} of centralized; none without it).", "",
             _selection(results), "",
             "## Accuracy", "", "| method | accuracy | macro-F1 | validation accuracy |",
             "|---|---|---|---|",
             f"| fd student ({cfg['rule']}) | {figure(results['student']['accuracy'])} | "
             f"{figure(results['student']['macro_f1'])} | "
             f"{figure(results['student'].get('validation_accuracy'))} |"]
    for name, b in results["baselines"].items():
        lines.append(f"| {LABELS.get(name, name)} | {figure(b['accuracy'])} | "
                     f"{figure(b['macro_f1'])} | {figure(b.get('validation_accuracy'))} |")
    tuning = results.get("fedavg_tuning")
    if tuning:
        lines += ["", f"FedAvg tuned on the validation split over {tuning['configurations']} "
                      f"configurations (learning rate x local epochs):", "",
                  "| learning rate | local epochs | validation | test | wall s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {t['learning_rate']:g} | {t['local_epochs']:g} | "
                  f"{figure(t['validation_accuracy'])} | {figure(t['test_accuracy'])} | "
                  f"{t['seconds']:.0f} |" for t in tuning["tried"]]
    lines += ["", f"The aggregated teacher's accuracy on the proxy split: "
                  f"{figure(results['student'].get('teacher_proxy_accuracy'))}."]
    if len(results.get("rounds") or []) > 1:
        lines += ["", "## Rounds", "",
                  "| round | teacher on the proxy | student | student (validation) | "
                  "specialists (mean) | up | down | cumulative (up + down) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["rounds"]:
            lines.append(f"| {r['round']} | {figure(r['teacher_proxy_accuracy'])} | "
                         f"{figure(r['student_accuracy'])} | "
                         f"{figure(r.get('student_validation_accuracy'))} | "
                         f"{figure(r['specialists_mean_accuracy'])} | "
                         f"{megabytes(r['uploaded_bytes'])} | {megabytes(r['downloaded_bytes'])} | "
                         f"{megabytes(r['cumulative_bytes'])} |")
    lines += ["", "## Communication", "",
              "| method | rounds | uploaded | total (up + down) | wall time | bytes to target "
              "| time to target | round |", "|---|---|---|---|---|---|---|---|"]
    for name, curve in results["curves"].items():
        hit = results["bytes_to_target"].get(name) or {"reached": False}
        lines.append(f"| {name} | {curve[-1]['round']} | {megabytes(curve[-1]['uploaded_bytes'])} "
                     f"| {megabytes(curve[-1]['total_bytes'])} | "
                     f"{seconds(curve[-1].get('seconds'))} | "
                     f"{megabytes(hit['bytes']) if hit['reached'] else 'not reached'} | "
                     f"{_times(hit) if hit['reached'] else '–'} | "
                     f"{hit['round'] if hit['reached'] else '–'} |")
    lines += ["", "Wall time counts each method's own training, transfers and per-round "
                  "evaluations (fd: the specialists, their bundles, aggregation and "
                  "distillation; "
                  + ("on a GPU, these seconds are GPU-seconds of one device)."
                     if results.get("device") == "cuda" else "on CPU).")]
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
    lines += dp_table(results) if results.get("dp") else []
    lines += ["", "## Time and memory", "", "| stage | wall s | peak RSS MiB |", "|---|---|---|"]
    for name, t in results["timing"].items():
        lines.append(f"| {name} | {t['wall_s']:.1f} | {t['peak_rss_mb']:.0f} |")
    if results["target_accuracy"] is not None:
        lines += ["", "![accuracy against cumulative bytes, up and down](accuracy_vs_bytes.png)"]
    return "\n".join(lines) + "\n"


def _selection(results: dict[str, Any]) -> str:
    cfg = results["config"]
    size = results["partition"]["sizes"].get("validation")
    if not size:
        return "No validation split: the last round's models are reported."
    if cfg.get("coordinator_validation"):
        return (f"Validation split: {size} labelled examples held out from everyone. The "
                f"coordinator used it (--coordinator-validation): the reported student is "
                f"round {results['selected_round']}'s, the best on validation, and FedAvg's "
                f"its best round on validation.")
    return (f"Validation split: {size} labelled examples held out from everyone, used only for "
            "choices (tuning); the coordinator did not use it, so the last round's models are "
            "reported.")


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
    for name in ("student", "fedavg", "fedavg_8bit", "fedprox", "centralized"):
        if name in p:
            row(name, p[name])
    return lines


def _non_private_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-private fd student and FedAvg, as rows of the privacy-utility table."""
    p = results.get("privacy") or {}
    fd = {"epsilon": None, "method": "fd", "accuracy": results["student"]["accuracy"],
          "macro_f1": results["student"]["macro_f1"], "bytes": results["bytes"]["fd"]["total"]}
    if p:
        fd["attack_auc_student"] = p["student"]["auc"]
        fd["attack_auc_specialists_max"] = max(s["auc"] for s in p["specialists"])
    rows = [fd]
    if "fedavg" in results["baselines"]:
        fedavg = {"epsilon": None, "method": "FedAvg",
                  "accuracy": results["baselines"]["fedavg"]["accuracy"],
                  "macro_f1": results["baselines"]["fedavg"]["macro_f1"],
                  "bytes": results["bytes"]["fedavg"]["total"]}
        if "fedavg" in p:
            fedavg["attack_auc"] = p["fedavg"]["auc"]
        rows.append(fedavg)
    return rows


def dp_table(results: dict[str, Any]) -> list[str]:
    """The privacy-utility table of ``fd simulate --dp-epsilons``."""
    dp = results["dp"]
    lines = ["", "## Differential privacy: utility against epsilon", "",
             f"Example-level DP (delta {dp['delta']:g}, clipping norm {dp['max_grad_norm']:g}):"
             f" {dp['privacy_unit']}. fd's DP consensus uses the {dp['rule']!r} rule. Attack: "
             "the loss-threshold AUC (specialists: the largest over clients).", "",
             "| epsilon (target / spent) | method | accuracy | macro-F1 | bytes | attack AUC "
             "(specialists) | attack AUC (student or global model) |",
             "|---|---|---|---|---|---|---|"]
    for r in [*_non_private_rows(results), *dp["rows"]]:
        eps = "none" if r["epsilon"] is None else \
            f"{r['epsilon']:g} / {figure(r['epsilon_spent_max'])}"
        model_auc = r.get("attack_auc_student", r.get("attack_auc"))
        method = r["method"] + (f" ({r['answered']} answered)" if "answered" in r else "")
        lines.append(f"| {eps} | {method} | {figure(r['accuracy'])} | "
                     f"{figure(r['macro_f1'])} | {megabytes(r['bytes'])} | "
                     f"{figure(r.get('attack_auc_specialists_max'))} | {figure(model_auc)} |")
    lines += ["", "![accuracy and attack AUC against epsilon](privacy_utility.png)"]
    return lines


def plot_privacy_utility(results: dict[str, Any], path: Path) -> None:
    """Accuracy (left) and attack AUC (right) against epsilon, one line per method, the
    non-private results as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, auc) = plt.subplots(1, 2, figsize=(10, 4))
    rows = results["dp"]["rows"]
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = [r for r in rows if r["method"] == method]
        xs = [r["epsilon"] for r in mine]
        nan = float("nan")
        acc.plot(xs, [nan if r["accuracy"] is None else r["accuracy"] for r in mine],
                 marker="o", color=f"C{i}", label=method)
        aucs = [r.get("attack_auc_student", r.get("attack_auc", nan)) for r in mine]
        auc.plot(xs, aucs, marker="o", color=f"C{i}", label=method)
    for i, r in enumerate(_non_private_rows(results)):
        style = dict(color=f"C{i}", linestyle=":", linewidth=1)
        acc.axhline(r["accuracy"], label=f"{r['method']} (no DP)", **style)
        found = r.get("attack_auc_student", r.get("attack_auc"))
        if found is not None:
            auc.axhline(found, label=f"{r['method']} (no DP)", **style)
    auc.axhline(0.5, color="grey", linewidth=1)
    for ax, label in ((acc, "test accuracy"), (auc, "membership attack AUC")):
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (delta %g)" % results["dp"]["delta"])
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def _spread(x: dict[str, Any], digits: int = 3) -> str:
    """``mean ± sd [low, high]`` of :func:`fdcli.stages.seeds.interval`."""
    if not x["n"]:
        return "–"
    low, high = x["ci95"]
    ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else ""
    return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}{ci}"


def seeds_markdown(doc: dict[str, Any]) -> str:
    """The report of ``fd simulate --seeds N`` (:func:`fdcli.stages.seeds.over_seeds`)."""
    cfg, found = doc["config"], doc["over_seeds"]
    n = len(cfg["seeds"])
    lines = [f"# fd simulate over {n} seeds: {cfg['num_clients']} clients, alpha "
             f"{cfg['alpha']}, {cfg['data']}", "",
             f"Seeds {', '.join(map(str, cfg['seeds']))}; each seed draws its own partition, "
             "models and baselines (its run: seed-<s>/report.md). Figures are mean ± standard "
             "deviation [95% Student-t interval of the mean].", "",
             "## Accuracy", "", "| method | accuracy | macro-F1 | membership AUC |",
             "|---|---|---|---|"]
    for name, m in found["methods"].items():
        lines.append(f"| {LABELS.get(name, name)} | {_spread(m['accuracy'])} | "
                     f"{_spread(m['macro_f1'])} | {_spread(m['membership_auc'])} |")
    lines += ["", "## Cost to the target accuracy", "",
              f"Target: {cfg['target_fraction']:.0%} of each seed's centralized accuracy. Bytes "
              "and seconds are over the seeds that reached it.", "",
              "| method | reached | bytes to target (MB) | time to target (s) | CPU time to "
              "target (s) | total MB | total s |", "|---|---|---|---|---|---|---|"]
    for name, m in found["methods"].items():
        t = m["target"]
        if not t["seeds"] and not m["total_bytes"]["n"]:
            continue  # no curve: centralized, standalone
        lines.append(f"| {LABELS.get(name, name)} | {t['reached']} of {t['seeds']} | "
                     f"{_spread(_scaled(t['bytes'], 1e-6))} | {_spread(t['seconds'], 0)} | "
                     f"{_spread(t.get('cpu_seconds') or {'n': 0}, 0)} | "
                     f"{_spread(_scaled(m['total_bytes'], 1e-6))} | "
                     f"{_spread(m['seconds'], 0)} |")
    lines += ["", "## Paired differences (fd minus the method, seed by seed)", "",
              "| method | accuracy difference | macro-F1 difference | bytes-to-target ratio "
              "(method / fd) | seeds both reached |", "|---|---|---|---|---|"]
    for name, p in found["paired"].items():
        lines.append(f"| {LABELS.get(name, name)} | {_spread(p['accuracy_difference'])} | "
                     f"{_spread(p['macro_f1_difference'])} | "
                     f"{_spread(p['bytes_to_target_ratio'], 1)} | {p['seeds_both_reached']} |")
    lines += ["", "![accuracy against cumulative bytes, mean and 95% interval over seeds]"
                  "(accuracy_vs_bytes.png)"]
    return "\n".join(lines) + "\n"


def _scaled(x: dict[str, Any], factor: float) -> dict[str, Any]:
    if not x["n"]:
        return x
    low, high = x["ci95"]
    return {**x, "mean": x["mean"] * factor, "std": x["std"] * factor,
            "ci95": [low * factor, high * factor] if low is not None else [None, None]}


def plot_seeds(doc: dict[str, Any], path: Path) -> None:
    """Accuracy against cumulative bytes over seeds: each method's mean curve (per round),
    with the 95% interval of the accuracy as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results import interval

    by_seed = doc["curves_by_seed"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(by_seed[0]):
        curves = [c[name] for c in by_seed if name in c]
        xs, ys, errs = [], [], []
        for j in range(max(len(c) for c in curves)):
            points = [c[j] for c in curves if j < len(c) and c[j]["total_bytes"] > 0]
            if not points:
                continue
            acc = interval([p["accuracy"] for p in points])
            xs.append(sum(p["total_bytes"] for p in points) / len(points))
            ys.append(acc["mean"])
            errs.append(acc["ci95"][1] - acc["mean"] if acc["ci95"][1] is not None else 0.0)
        ax.errorbar(xs, ys, yerr=errs, marker="." if len(xs) > 1 else "o", capsize=3,
                    color=f"C{i}", label=name)
    targets = [t for t in doc["target_accuracy"] if t is not None]
    if targets:
        ax.axhline(sum(targets) / len(targets), color="grey", linestyle="--", linewidth=1,
                   label="target (mean)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)  # accuracy; an interval of few seeds can reach past it
    ax.set_xlabel("cumulative bytes sent, up and down, all clients (mean over seeds)")
    ax.set_ylabel("test accuracy (mean, 95% interval)")
    cfg = doc["config"]
    ax.set_title(f"{cfg['num_clients']} clients, alpha {cfg['alpha']}, "
                 f"{len(cfg['seeds'])} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
