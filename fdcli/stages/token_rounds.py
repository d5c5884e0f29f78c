"""Rounds of a token simulation (``fd simulate --task causal-lm|seq2seq --rounds R``): the same
protocol as classification's (docs/rounds.md), through the token tasks' own stages.

Round 1 is the one-shot federation the simulation has already run: specialists, their
bundles, the consensus and a student. In each later round the consensus goes down to every
client, which continues its specialist on its own text while it digests the consensus on the
proxy (``train-specialist --teacher --proxy``), and emits a new bundle; the coordinator
aggregates them and continues the student's training on the new consensus. Round r's
artifacts live in ``root/rounds/round-r/{specialists,bundles,teachers,students}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .federation import dir_bytes, round_dir


@dataclass
class TokenStages:
    """A token task's stages as a simulation runs them (each writes the folder it is given).

    ``train(i, start, out, consensus)`` a later round's specialist of client i from ``start``;
    ``emit(model, bundle, i)``; ``aggregate(bundles, out)``; ``distill(start, teacher, out)``
    continues a student; ``score(model)`` -> its scores, of which ``perplexity(scores)`` is
    the figure the rounds are followed by (a causal LM's geometric mean over the domains, a
    seq2seq model's on the union of them); ``validate(model)``, when the simulation holds out
    a validation split, the figures on it, name -> value (``perplexity`` first, then a
    seq2seq model's generation scores), recorded per round as ``validation_<name>``, for
    choices."""

    train: Callable[[int, Path, Path, Path], Any]
    emit: Callable[[Path, Path, int], Any]
    aggregate: Callable[[list[Path], Path], Any]
    distill: Callable[[Path, Path, Path], Any]
    score: Callable[[Path], dict[str, Any]]
    perplexity: Callable[[dict[str, Any]], float]
    validate: Callable[[Path], dict[str, float]] | None = None

    def validation(self, student: Path) -> dict[str, float]:
        """``{"validation_perplexity": ..., ...}`` of a student, or nothing without a
        split."""
        return {} if self.validate is None else {
            f"validation_{name}": round(value, 3)
            for name, value in self.validate(student).items()}

    def mean_perplexity(self, specialists: list[dict[str, Any]]) -> float:
        return round(sum(self.perplexity(s) for s in specialists) / len(specialists), 3)


def check_rounds(rounds: int, round_epochs: float, round_distill_epochs: float,
                 digest_weight: float) -> None:
    """Refuse round settings a token simulation cannot run, naming them."""
    if rounds < 1 or not round_epochs > 0 or not round_distill_epochs > 0:
        raise ValueError(f"rounds must be >= 1, round_epochs and round_distill_epochs > 0; "
                         f"got {rounds}, {round_epochs} and {round_distill_epochs}")
    if not 0 < digest_weight <= 1:
        raise ValueError(f"digest_weight must be in (0, 1], got {digest_weight}")


def token_poisoned(num_clients: int, fraction: float, kind: str, seed: int) -> set[int]:
    """The hostile clients of a token simulation (:func:`~fdcli.poison.poisoned_clients`),
    the kind checked first."""
    from ..poison import TOKEN_POISON_KINDS, poisoned_clients

    if kind not in TOKEN_POISON_KINDS:
        raise ValueError(f"poison kind must be one of {list(TOKEN_POISON_KINDS)} for a token "
                         f"task, got {kind!r}")
    return set(poisoned_clients(num_clients, fraction, seed))


def first_round(stages: TokenStages, uploads: list[int], student: dict[str, Any],
                specialists: list[dict[str, Any]], seconds: float,
                student_dir: Path) -> dict[str, Any]:
    """Round 1's record, from what the one-shot simulation measured (``student_dir``: the
    student's folder, for the validation split)."""
    return {"round": 1, "student": student, "perplexity": stages.perplexity(student),
            **stages.validation(student_dir),
            "uploaded_bytes": sum(uploads), "downloaded_bytes": 0,
            "uploaded_per_client": list(uploads),
            "specialists_mean_ppl": stages.mean_perplexity(specialists), "seconds": seconds}


def later_rounds(root: Path, rounds: int, num_clients: int, rule: str, stages: TokenStages,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run rounds 2..``rounds`` after round 1's artifacts under ``root`` (``specialists/``,
    ``teachers/RULE``, ``students/RULE``); returns each round's record: the student's scores,
    the specialists' mean perplexity, the bytes up (bundles) and down (the consensus, to
    every client) and the round's wall seconds."""
    records = []
    for r in range(2, rounds + 1):
        started = time.perf_counter()
        before, here = round_dir(root, r - 1), round_dir(root, r)
        consensus = before / "teachers" / rule
        log(f"round {r}: each client digests the round-{r - 1} consensus and revisits its text")
        uploads, specialists = [], []
        for i in range(num_clients):
            model = here / "specialists" / f"client-{i}"
            stages.train(i, before / "specialists" / f"client-{i}", model, consensus)
            bundle = here / "bundles" / f"client-{i}"
            stages.emit(model, bundle, i)
            uploads.append(dir_bytes(bundle))
            specialists.append(stages.score(model))
        teacher = here / "teachers" / rule
        log(f"round {r}: aggregating with rule {rule!r} and continuing the student")
        stages.aggregate([here / "bundles" / f"client-{i}" for i in range(num_clients)],
                         teacher)
        student = here / "students" / rule
        stages.distill(before / "students" / rule, teacher, student)
        scores = stages.score(student)
        records.append({"round": r, "student": scores, "perplexity": stages.perplexity(scores),
                        **stages.validation(student), "uploaded_bytes": sum(uploads),
                        "downloaded_bytes": dir_bytes(consensus) * num_clients,
                        "uploaded_per_client": uploads,
                        "specialists_mean_ppl": stages.mean_perplexity(specialists),
                        "seconds": time.perf_counter() - started})
    return records


def round_curve(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """fd's curve: per round, the student's perplexity and the cumulative bytes (up, and up
    plus down) and wall seconds."""
    up = total = 0
    seconds = 0.0
    points = []
    for rec in records:
        up += rec["uploaded_bytes"]
        total += rec["uploaded_bytes"] + rec["downloaded_bytes"]
        seconds += rec["seconds"]
        points.append({"round": rec["round"], "perplexity": rec["perplexity"],
                       "uploaded_bytes": up, "total_bytes": total,
                       "seconds": round(seconds, 2)})
    return points


def rounds_md(records: list[dict[str, Any]],
              extra: dict[str, Callable[[dict[str, Any]], float]] | None = None) -> list[str]:
    """report.md's rounds table: the student's perplexity (and the ``extra`` scores, name ->
    how to read it from the student's scores) per round, the specialists' mean perplexity,
    the bytes each way."""
    if len(records) < 2:
        return []
    extra = extra or {}
    val = [k for k in records[0] if k.startswith("validation_")]
    names = {"perplexity": "ppl", "bleu": "BLEU", "chrf": "chrF", "rouge_l": "ROUGE-L"}
    lines = ["", "Rounds (the student continues on each round's consensus):", "",
             "| round | student ppl | "
             + "".join(f"validation {names.get(n, n)} | "
                       for n in (k.removeprefix("validation_") for k in val))
             + "".join(f"{e} | " for e in extra)
             + "specialists' mean ppl | bytes up | bytes down |",
             "|---" * (5 + len(val) + len(extra)) + "|"]
    for rec in records:
        lines.append(f"| {rec['round']} | {rec['perplexity']:.2f} | "
                     + "".join(f"{rec[k]:.2f} | " for k in val)
                     + "".join(f"{get(rec['student']):.2f} | " for get in extra.values())
                     + f"{rec['specialists_mean_ppl']:.2f} | {rec['uploaded_bytes']:,} | "
                       f"{rec['downloaded_bytes']:,} |")
    return lines
