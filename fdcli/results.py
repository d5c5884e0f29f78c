"""The typed results of ``fd simulate``: what ``results.json`` holds, in a versioned schema.

Every simulation (each task's) writes its own detailed sections, and beside them a uniform
list of **scores**: one :class:`Score` per method and variant, with one value per seed for
each metric. A method is what was trained (``fd`` the student, ``fedavg``, ``centralized``,
...); a variant says how (``{"rule": "mean"}``, later ``{"dp_epsilon": 3}``). Runs at several
seeds combine with :func:`merge`, which keeps every value and reports each metric's mean and
spread, so a table can say "0.958 +/- 0.004 over 3 seeds".

Schema (docs/baselines.md, "results.json"): ``schema`` ``"fd-simulate-results"``,
``schema_version`` 1, ``task``, ``seeds`` and ``scores``: a list of ``{"method", "variant",
"seeds", "metrics": {name: [value per seed]}, "summary": {name: {"mean", "std", "n"}},
"bytes": [total bytes sent per seed, or null]}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import FdError

SCHEMA = "fd-simulate-results"
SCHEMA_VERSION = 1


@dataclass
class Score:
    """One method (one variant of it) at one or more seeds: ``metrics[name][i]`` is the value
    at ``seeds[i]``; ``bytes[i]`` what the method sent in that run (None where not
    counted)."""

    method: str
    seeds: list[int]
    metrics: dict[str, list[float]]
    variant: dict[str, Any] = field(default_factory=dict)
    bytes: list[int | None] | None = None

    @classmethod
    def one(cls, method: str, seed: int, metrics: Mapping[str, Any], *,
            variant: Mapping[str, Any] | None = None, sent: int | None = None) -> "Score":
        """A score from one run: the numeric ``metrics`` (others are left out)."""
        kept = {k: [float(v)] for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return cls(method, [seed], kept, dict(variant or {}), [sent])

    @property
    def key(self) -> tuple[str, str]:
        return self.method, json.dumps(self.variant, sort_keys=True)

    def summary(self) -> dict[str, dict[str, float]]:
        """Each metric's mean, sample standard deviation (0 for one seed) and count."""
        out = {}
        for name, values in self.metrics.items():
            n, mean, std = _mean_std(values)
            out[name] = {"mean": mean, "std": std, "n": n}
        return out

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "variant": self.variant, "seeds": self.seeds,
                "metrics": self.metrics, "summary": self.summary(), "bytes": self.bytes}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Score":
        if not isinstance(value, dict) or not isinstance(value.get("method"), str):
            raise FdError(f"{where}: expected a score object with a 'method' string")
        seeds, metrics = value.get("seeds"), value.get("metrics")
        if not isinstance(seeds, list) or not isinstance(metrics, dict) or any(
                not isinstance(v, list) or len(v) != len(seeds) for v in metrics.values()):
            raise FdError(f"{where} ({value['method']}): 'metrics' must hold one value per "
                          "seed for every metric")
        return cls(value["method"], list(seeds), {k: list(v) for k, v in metrics.items()},
                   dict(value.get("variant") or {}), value.get("bytes"))


def _mean_std(values: Sequence[float]) -> tuple[int, float, float]:
    """Count, mean and sample standard deviation (0 for one value) of non-empty ``values``."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return n, mean, std


def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and the 95% Student-t interval of the mean (None
    bounds for fewer than two values)."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "ci95": [None, None], "values": []}
    n, mean, std = _mean_std(values)
    ci95: list[float | None] = [None, None]
    if n > 1:
        from scipy.stats import t  # scipy comes with scikit-learn

        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        ci95 = [mean - half, mean + half]
    return {"n": n, "mean": mean, "std": std, "ci95": ci95, "values": list(values)}


def merge(runs: Iterable[list[Score]]) -> list[Score]:
    """The scores of runs at different seeds, combined per method and variant (a metric that
    a run lacks is left out of that method's combination)."""
    combined: dict[tuple[str, str], Score] = {}
    for scores in runs:
        for s in scores:
            sent = list(s.bytes or [None] * len(s.seeds))
            have = combined.get(s.key)
            if have is None:
                combined[s.key] = Score(s.method, list(s.seeds),
                                        {k: list(v) for k, v in s.metrics.items()},
                                        dict(s.variant), sent)
                continue
            have.metrics = {k: v + s.metrics[k] for k, v in have.metrics.items()
                            if k in s.metrics}
            have.seeds += s.seeds
            have.bytes = (have.bytes or []) + sent
    return list(combined.values())


def document(task: str, results: Mapping[str, Any], scores: list[Score]) -> dict[str, Any]:
    """``results`` (a simulation's own sections) with the schema header and ``scores``."""
    seeds = sorted({seed for s in scores for seed in s.seeds})
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "task": task, "seeds": seeds,
            "scores": [s.to_json() for s in scores], **results}


def write_results(folder: str | Path, task: str, results: dict[str, Any],
                  scores: list[Score]) -> dict[str, Any]:
    """Write ``folder/results.json`` (:func:`document`) and return what was written."""
    doc = document(task, results, scores)
    (Path(folder) / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def read_scores(path: str | Path) -> tuple[str, list[Score]]:
    """``(task, scores)`` of a ``results.json``; a file of another schema or version is
    refused, naming both."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FdError(f"{path}: not a readable results.json ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise FdError(f"{path}: not an fd simulate results.json (schema "
                      f"{doc.get('schema') if isinstance(doc, dict) else None!r}, expected "
                      f"{SCHEMA!r})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise FdError(f"{path}: results schema version {doc.get('schema_version')!r}; this fd "
                      f"reads version {SCHEMA_VERSION}")
    return doc.get("task"), [Score.from_json(s, f"{path}: scores[{i}]")
                             for i, s in enumerate(doc.get("scores") or [])]
