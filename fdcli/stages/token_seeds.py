"""``fd simulate --task causal-lm|seq2seq --seeds N``: the whole token comparison at N seeds
(each seed draws its own models, corpus split of a ``--data`` corpus, and baselines),
combined per method into means, standard deviations and 95% intervals, with the paired
differences the claims are about (fd's student minus each other model, seed by seed).

Each seed's run is a complete simulation in ``out/seed-<s>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..outputs import fresh_dir
from ..results import Score, document, interval, merge

#: the figures combined over seeds, per task (the first is the headline)
METRICS = {"causal-lm": ("mean_ppl", "next_token_accuracy"),
           "seq2seq": ("bleu", "chrf", "rouge_l", "perplexity")}


def token_over_seeds(run: Callable[..., dict[str, Any]], out: str | Path, *, task: str,
                     seeds: int, first_seed: int, overwrite: bool,
                     log: Callable[[str], None], **settings) -> dict[str, Any]:
    """``run`` (the one-seed simulation) at ``seeds`` consecutive seeds into
    ``out/seed-<s>``; writes the combination to ``out/results.json`` and ``out/report.md``
    and returns it."""
    with fresh_dir(out, overwrite) as root:
        docs = []
        for i, s in enumerate(range(first_seed, first_seed + seeds)):
            log(f"seed {s} ({i + 1} of {seeds})")
            docs.append(run(root / f"seed-{s}", seed=s, seeds=1, overwrite=False, log=log,
                            **settings))
        return write_token_combined(root, docs, task)


def _name(score: Score) -> str:
    return score.method + "".join(f" {k}={v}" for k, v in sorted(score.variant.items()))


def _by_seed(score: Score, metric: str) -> dict[int, float]:
    return dict(zip(score.seeds, score.metrics.get(metric, [])))


def combine_token(scores: Sequence[Score], docs: Sequence[dict[str, Any]],
                  task: str) -> dict[str, Any]:
    """Each model's figures over the seeds and the paired differences of fd's main student
    (the one whose bytes are counted: the last round's) from each other model; for
    causal-lm also the best specialist of each seed (lowest perplexity on the union)."""
    metrics = METRICS[task]
    methods = {_name(s): {m: interval(s.metrics[m]) for m in metrics if m in s.metrics}
               for s in scores}
    main = next(s for s in scores if s.method == "fd" and s.bytes and s.bytes[0] is not None)
    paired = {}
    for other in scores:
        if other is main:
            continue
        paired[_name(other)] = {}
        for m in metrics:
            a, b = _by_seed(main, m), _by_seed(other, m)
            both = [s for s in a if s in b]
            paired[_name(other)][f"{m}_difference"] = interval([a[s] - b[s] for s in both])
    out: dict[str, Any] = {"main": _name(main), "methods": methods, "paired": paired}
    if task == "causal-lm":
        best = {d["config"]["seed"]: min(s["mean_ppl"] for s in d["specialists"]) for d in docs}
        mine = _by_seed(main, "mean_ppl")
        out["best_specialist"] = {"mean_ppl": interval(list(best.values())),
                                  "student_minus_best": interval(
                                      [mine[s] - best[s] for s in best if s in mine])}
    return out


def write_token_combined(root: Path, docs: Sequence[dict[str, Any]],
                         task: str) -> dict[str, Any]:
    """Write the combination of one-seed token results ``docs`` (runs in ``root/seed-<s>``)
    to ``root/results.json`` and ``report.md``; return it. Also for runs made one seed at a
    time: ``write_token_combined(root, [json.load(...) for each seed], task)``."""
    merged = merge([Score.from_json(v, f"seed-{d['config']['seed']}: scores[{i}]")
                    for i, v in enumerate(d["scores"])] for d in docs)
    config = {**docs[0]["config"], "seeds": [d["config"]["seed"] for d in docs]}
    config.pop("seed", None)
    results = {"fd_version": __version__, "config": config,
               "runs": [f"seed-{d['config']['seed']}/results.json" for d in docs],
               "over_seeds": combine_token(merged, docs, task)}
    doc = document(task, results, merged)
    (root / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (root / "report.md").write_text(token_seeds_markdown(doc))
    return doc


def spread(x: dict[str, Any]) -> str:
    if not x or not x.get("n"):
        return ""
    text = f"{x['mean']:.3f} ± {x['std']:.3f}"
    low, high = x["ci95"]
    return text + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def token_seeds_markdown(doc: dict[str, Any]) -> str:
    """report.md of a token simulation over seeds."""
    cfg, found = doc["config"], doc["over_seeds"]
    metrics = METRICS[doc["task"]]
    lines = [f"# fd simulate --task {doc['task']} over {len(cfg['seeds'])} seeds", "",
             f"Seeds {', '.join(map(str, cfg['seeds']))} (each run: seed-<s>/report.md). "
             "Figures are mean ± standard deviation [95% Student-t interval of the mean].", "",
             "| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, m in found["methods"].items():
        lines.append(f"| {name} | " + " | ".join(spread(m.get(k)) for k in metrics) + " |")
    if "best_specialist" in found:
        b = found["best_specialist"]
        lines += ["", f"Best specialist's perplexity on the union of the domains (per seed): "
                      f"{spread(b['mean_ppl'])}; student minus it: "
                      f"{spread(b['student_minus_best'])}."]
    lines += ["", f"## Paired differences ({found['main']} minus the model, seed by seed)", "",
              "| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, p in found["paired"].items():
        lines.append(f"| {name} | " + " | ".join(spread(p[f'{k}_difference'])
                                                   for k in metrics) + " |")
    return "\n".join(lines) + "\n"
