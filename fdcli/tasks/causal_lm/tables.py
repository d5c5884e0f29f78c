"""fd simulate's table for causal-lm: perplexity by domain."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ...console import human, out, plain
from ..token import print_baselines, print_token_seeds


def print_simulation(results: dict, out_dir: Path) -> None:
    if "over_seeds" in results:
        print_token_seeds(results, out_dir)
        return
    domains = list(results["domains"])
    table = Table(title=plain(f"fd simulate --task causal-lm: perplexity by domain "
                              f"({out_dir}/results.json)"), title_justify="left")
    for col in ("model", "architecture", *domains, "mean", "uploaded"):
        table.add_column(col)

    def row(name: str, s: dict, uploaded: str = "") -> None:
        table.add_row(name, s["architecture"], *[f"{s['ppl_by_domain'][d]:.1f}" for d in domains],
                      f"{s['mean_ppl']:.1f}", uploaded)

    for s in results["specialists"]:
        row(f"specialist {s['client_id']} ({s['domain']})", s, human(s["uploaded_bytes"]))
    rule, final = results["config"]["rule"], results["student"]
    for name, s in results["students_by_rule"].items():
        if name == rule:
            if final.get("round", 1) > 1:
                row(f"student ({name}, round 1)", s)
                name = f"{name}, round {final['round']}"
            s = final
        row(f"student ({name})", s, human(results["bytes"]["total"]) if s is final else "")
    row("proxy only (no teachers)", results["proxy_only"])
    row("centralized", results["centralized"])
    for name, s in results.get("baselines", {}).items():
        row(f"{name} (sent {human(s['total_bytes'])})", s)
    for dp in results.get("dp", []):
        row(f"student from DP-SGD specialists, epsilon {dp['epsilon']:g}",
            {"architecture": results["config"]["student"], **dp["student"]},
            human(dp["uploaded_bytes"]))
    out.print(table)
    print_baselines(results)

