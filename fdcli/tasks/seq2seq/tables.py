"""fd simulate's table for seq2seq: BLEU, chrF, ROUGE-L and perplexity."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ...console import human, out, plain
from ..token import print_baselines, print_token_seeds


def print_simulation(results: dict, out_dir: Path) -> None:
    if "over_seeds" in results:
        print_token_seeds(results, out_dir)
        return
    table = Table(title=plain(f"fd simulate --task seq2seq: docstrings on the union of the "
                              f"domains ({out_dir}/results.json)"), title_justify="left")
    for col in ("model", "architecture", "BLEU", "chrF", "ROUGE-L", "perplexity", "sent"):
        table.add_column(col)

    def row(name: str, s: dict, sent: str = "") -> None:
        u = s["union"]
        table.add_row(name, s.get("architecture", ""), f"{u['bleu']:.2f}", f"{u['chrf']:.2f}",
                      f"{u['rouge_l']:.2f}", f"{u['perplexity']:.1f}", sent)

    for s in results["specialists"]:
        row(f"specialist {s['client_id']} ({s['domain']})", s, human(s["uploaded_bytes"]))
    row("specialists (mean)", results["specialists_mean"])
    final = results["student"]
    for name, s in results["students"].items():
        if name == "proxy_targets":
            if final.get("round", 1) > 1:
                row("student (proxy targets, round 1)", s)
                name = f"proxy_targets, round {final['round']}"
            s = final
        row(f"student ({name.replace('_', ' ')})", s,
            human(results["bytes"]["total"]) if s is final else "")
    row("proxy only", results["proxy_only"])
    row("centralized", results["centralized"])
    for name, s in results["baselines"].items():
        row(name, s, human(s["total_bytes"]))
    out.print(table)
    print_baselines(results)

