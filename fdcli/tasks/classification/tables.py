"""fd simulate's table for classification: accuracy and bytes of every model."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ...console import human, out, plain


def print_simulation(results: dict, out_dir: Path) -> None:
    if "over_seeds" in results:
        print_seeds(results, out_dir)
        return
    alpha = results["config"]["alpha"]
    n_rounds = len(results["rounds"])
    table = Table(title=plain(f"fd simulate: {len(results['specialists'])} clients, "
                              f"alpha={alpha}, {n_rounds} round(s) ({out_dir}/results.json)"),
                  title_justify="left")
    for col in ("model", "architecture", "accuracy", "macro-F1", "sent (up + down)"):
        table.add_column(col)
    for s in results["specialists"]:
        table.add_row(f"specialist {s['client_id']}", s["architecture"], f"{s['accuracy']:.3f}",
                      f"{s['macro_f1']:.3f}", human(s["uploaded_bytes"]) + " (last round up)")
    for name, s in results["students_by_rule"].items():
        sent = results["bytes"]["fd"]["total"] if name == results["config"]["rule"] else None
        table.add_row(f"student ({name})", s["architecture"], f"{s['accuracy']:.3f}",
                      f"{s['macro_f1']:.3f}", human(sent) if sent else "")
    for name, b in results["baselines"].items():
        sent = results["bytes"].get(name, {}).get("total")
        arch = "each alone (mean)" if name == "standalone" else results["student"]["architecture"]
        table.add_row(name, arch, f"{b['accuracy']:.3f}", f"{b['macro_f1']:.3f}",
                      human(sent) if sent else "")
    for r in (results.get("dp") or {}).get("rows", []):
        if r["accuracy"] is None:  # a PATE consensus that answered nothing
            table.add_row(f"{r['method']}, epsilon {r['epsilon']:g}", "", "no example "
                          "answered", "", "")
            continue
        table.add_row(f"{r['method']}, epsilon {r['epsilon']:g} (spent "
                      f"{r['epsilon_spent_max']:.2f})", ",".join(r["architectures"]),
                      f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", human(r["bytes"]))
    out.print(table)
    if results["poisoned_clients"]:
        out.print(plain(f"poisoned ({results['config']['poison_kind']}): "
                        f"{', '.join(results['poisoned_clients'])}; flagged as outliers by "
                        f"the aggregate: {', '.join(results['outliers_flagged']) or 'none'}"))
    hits = results["bytes_to_target"]
    if hits:
        reached = {k: human(v["bytes"]) if v["reached"] else "not reached"
                   for k, v in hits.items()}
        out.print(f"bytes to {results['target_accuracy']:.3f} accuracy: " +
                  ", ".join(f"{k} {v}" for k, v in reached.items()), highlight=False)
    out.print(plain(f"report: {out_dir}/report.md"))



def print_seeds(results: dict, out_dir: Path) -> None:
    """The table of ``fd simulate --seeds N``: each method's mean, sd and 95% interval."""
    cfg, found = results["config"], results["over_seeds"]
    table = Table(title=plain(f"fd simulate: {cfg['num_clients']} clients, alpha="
                              f"{cfg['alpha']}, {len(cfg['seeds'])} seeds "
                              f"({out_dir}/results.json)"), title_justify="left")
    for col in ("model", "accuracy: mean ± sd [95% interval]", "reached target",
                "fd minus it [95% interval]"):
        table.add_column(col)
    for name, m in found["methods"].items():
        acc, t = m["accuracy"], m["target"]
        low, high = acc["ci95"]
        diff = found["paired"].get(name, {}).get("accuracy_difference")
        table.add_row(name, f"{acc['mean']:.3f} ± {acc['std']:.3f}"
                      + (f" [{low:.3f}, {high:.3f}]" if low is not None else ""),
                      f"{t['reached']} of {t['seeds']}" if t["seeds"] else "",
                      f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
                      if diff and diff["ci95"][0] is not None else "")
    out.print(table)
    out.print(plain(f"report: {out_dir}/report.md"))
