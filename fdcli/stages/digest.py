"""A later round of train-specialist, for every task that has rounds: open the coordinator's
consensus, and train on it and on the private data together (docs/rounds.md).

``mixed`` (the default) shuffles proxy and private examples into the same batches and
minimises ``digest_weight`` * KD(consensus) + (1 - ``digest_weight``) * CE, the KD term over
the proxy examples' rows (a class distribution, or every token of a proxy block or target)
and the CE term over the private examples' rows; ``alternate`` (FedMD) digests the consensus
over the proxy for the given epochs, then revisits the private data for as many.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

SCHEDULES = ("mixed", "alternate")


def check_round(digest_weight: float, schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if not 0 < digest_weight <= 1:
        raise ValueError(f"digest_weight must be in (0, 1], got {digest_weight}")


def check_pair(teacher, proxy) -> None:
    if (teacher is None) != (proxy is None):
        raise ValueError("--teacher (the consensus bundle) and --proxy (the proxy set it was "
                         "made on) go together")


def consensus_record(reader, teacher) -> dict[str, Any]:
    """What a specialist's fd.json (and the bundles it emits) record of the consensus it
    digested: its manifest's sha256, the round it closed, its path, examples and clients."""
    m = reader.manifest
    seen = m.producer.config.get("round")
    return {"sha256": reader.manifest_sha256,
            "round": seen if isinstance(seen, int) and seen > 0 else 1,
            "path": str(teacher), "examples": m.examples,
            "clients": [p.get("client_id") for p in m.provenance if isinstance(p, dict)]}


def round_meta(record: dict[str, Any], proxy_examples: int) -> dict[str, Any]:
    """The fd.json fields of a specialist trained in a later round."""
    return {"round": record["round"] + 1, "consensus": record, "proxy_examples": proxy_examples}


def round_config(meta: dict[str, Any]) -> dict[str, Any]:
    """What a bundle's producer config carries from its model's fd.json: the round and the
    consensus the model digested (the coordinator's aggregate numbers its round from it)."""
    return {k: meta[k] for k in ("round", "consensus") if meta.get(k) is not None}


def digest_and_revisit(fit: Callable[..., dict[str, float]], values: Sequence[Any],
                       labels: list[int] | None, proxy_values: Sequence[Any],
                       proxy_ids: list[int], teacher_rows, schedule: str,
                       digest_weight: float) -> dict[str, float]:
    """Train on the private examples (``values``, with ``labels`` for a classifier; None for
    token tasks, whose labels are their next tokens) and on the consensus over the proxy
    examples (``proxy_values``, whose rows in the consensus are ``proxy_ids``).
    ``fit(values, labels, teacher=, example_ids=, hard_weight=)`` trains the model in place
    (the task's ``fit``); returns its metrics, the digest pass's as ``digest_*`` too with
    ``alternate``."""
    if schedule == "mixed":
        mixed_labels = None if labels is None else list(labels) + [-100] * len(proxy_values)
        return fit(list(values) + list(proxy_values), mixed_labels, teacher=teacher_rows,
                   example_ids=[None] * len(values) + list(proxy_ids),
                   hard_weight=1 - digest_weight)
    digested = fit(list(proxy_values), None, teacher=teacher_rows,
                   example_ids=list(proxy_ids), hard_weight=0.0)
    metrics = fit(list(values), labels, teacher=None, example_ids=None, hard_weight=0.0)
    return {**metrics, **{f"digest_{k}": v for k, v in digested.items()}}
