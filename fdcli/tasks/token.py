"""What the two token tasks (causal-lm, seq2seq) share in the registry: the lines under
their simulation tables, and the table of a run over seeds."""

from __future__ import annotations

from pathlib import Path

from ..console import human, out, plain


def print_token_seeds(results: dict, out_dir: Path) -> None:
    """The table of ``fd simulate --task causal-lm|seq2seq --seeds N``: each model's mean,
    sd and 95% interval, and fd's student minus it (the headline figure)."""
    from rich.table import Table

    from ..stages.token_seeds import METRICS, spread

    found, metric = results["over_seeds"], METRICS[results["task"]][0]
    table = Table(title=plain(f"fd simulate --task {results['task']}: "
                              f"{len(results['config']['seeds'])} seeds "
                              f"({out_dir}/results.json)"), title_justify="left")
    for col in ("model", f"{metric}: mean ± sd [95% interval]",
                f"{found['main']} minus it [95% interval]"):
        table.add_column(col)
    for name, m in found["methods"].items():
        diff = found["paired"].get(name, {}).get(f"{metric}_difference")
        table.add_row(name, spread(m.get(metric)), spread(diff))
    out.print(table)


def print_baselines(results: dict) -> None:
    hits = results.get("bytes_to_student_perplexity", {})
    reached = [f"{n} {human(h['bytes']) if h['reached'] else 'not reached'}"
               for n, h in hits.items() if n != "target_perplexity"]
    if reached:
        out.print(plain(f"FedAvg's bytes to the student's perplexity "
                        f"({hits['target_perplexity']:.1f}): " + ", ".join(reached)))
    p = results.get("privacy")
    if p:
        aucs = [f"{n} {p[n]['auc']:.3f}" for n in p if isinstance(p[n], dict) and "auc" in p[n]]
        out.print(plain(f"membership-inference AUC (loss attack): specialists (mean) "
                        f"{p['specialists_mean_auc']:.3f}, " + ", ".join(aucs)))

