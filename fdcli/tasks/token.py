"""What the two token tasks (causal-lm, seq2seq) share in the registry: the lines under
their simulation tables."""

from __future__ import annotations

from ..console import human, out, plain


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

