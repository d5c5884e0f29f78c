"""fd simulate's table for embedding: linear probe, k-NN and neighbour agreement."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ...console import out, plain


def print_simulation(results: dict, out_dir: Path) -> None:
    c = results["config"]
    table = Table(title=plain(f"fd simulate --task embedding: probes on the test split "
                              f"({out_dir}/results.json)"))
    for col in ("model", "linear probe", "k-NN", "neighbour agreement"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, p in results["probes"].items():
        table.add_row(plain(name), f"{p['linear_probe_accuracy']:.3f}",
                      f"{p['knn_accuracy']:.3f}",
                      f"{p['neighbour_agreement_with_specialists']:.3f}")
    out.print(table)
    b = results["bytes"]
    out.print(plain(f"relational bundles: {c['anchors']} anchors, top-{c['k']}: "
                    f"{b['relational_per_example']:.1f} bytes per example and client (label "
                    f"logits: {b['label_logit_per_example']:.1f}); relational minus "
                    f"label-logit student: {results['relational_minus_label_logit'] * 100:+.1f} "
                    "points"))
