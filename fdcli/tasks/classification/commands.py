"""Classification's functions that are more than one stage function."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def evaluate(model: str | Path, data: str | Path, *, text_column: str | None = None,
             image_column: str | None = None, label_column: str | None = None,
             split: str | None = None, batch_size: int = 64, dtype: str = "auto",
             mia: bool = False, members: str | Path | None = None,
             nonmembers: str | Path | None = None, references: Sequence[str | Path] = (),
             match_labels: bool = False) -> dict[str, Any]:
    """Accuracy, macro-F1, NLL and calibration of ``model`` on ``data``
    (:func:`fdcli.stages.evaluate.evaluate`); with ``mia``, also the membership-inference
    attacks (:func:`fdcli.stages.evaluate.membership_inference`) on ``members`` and
    ``nonmembers``, flattened into ``mia_ATTACK_FIELD`` keys."""
    from ...stages.evaluate import evaluate as run
    from ...stages.evaluate import membership_inference

    if mia and (members is None or nonmembers is None):
        raise ValueError("--mia needs --members (training examples of the model) and "
                         "--nonmembers (held-out examples from the same distribution)")
    if not mia and (members, nonmembers, tuple(references), match_labels) != (None, None, (),
                                                                              False):
        raise ValueError("--members, --nonmembers, --references and --match-labels apply "
                         "with --mia")
    columns = dict(text_column=text_column, image_column=image_column,
                   label_column=label_column)
    result = run(model, data, split=split, batch_size=batch_size, dtype=dtype, **columns)
    if mia:
        attacks = membership_inference(model, members, nonmembers, references=references,
                                       match_labels=match_labels, batch_size=batch_size,
                                       **columns)
        for name in ("loss_threshold", "reference"):
            for key, value in attacks.get(name, {}).items():
                if key != "references":
                    result[f"mia_{name}_{key}"] = value
    return result
