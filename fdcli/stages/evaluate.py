"""fd evaluate: task quality and calibration of any classifier on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data import label_ids, load_local, resolve
from ..devices import place
from ..models import load_classifier, predict_logits


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           num_classes: int, bins: int = 15) -> dict[str, float]:
    """accuracy, macro-F1 (over the classes present in labels or predictions), NLL (nats)
    and expected calibration error with ``bins`` equal-width confidence bins."""
    from sklearn.metrics import f1_score

    logp = torch.log_softmax(logits.float(), -1)
    conf, pred = logp.exp().max(-1)
    correct = (pred == labels).float()
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if bool(inside.any()):
            ece += float(inside.float().mean() * (conf[inside].mean() - correct[inside].mean())
                         .abs())
    return {"accuracy": float(correct.mean()),
            "macro_f1": float(f1_score(labels.numpy(), pred.numpy(), average="macro",
                                       labels=list(range(num_classes)), zero_division=0)),
            "nll": float(-logp.gather(1, labels[:, None]).mean()), "ece": ece,
            "examples": int(len(labels))}


def _scored(model, data, text_column, image_column, label_column, split, batch_size,
            clf=None, dtype: str = "auto"):
    """(classifier, logits, labels) of ``model`` (or the already loaded ``clf``) on the
    labelled dataset ``data``; a model loaded here runs in ``dtype``."""
    ds = load_local(data, split)
    if clf is None:
        probe = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                        label_column=label_column)
        clf = load_classifier(model, probe.kind, None)
        place(clf.model, dtype)
    spec = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                   label_column=label_column, label_names=clf.label_names)
    labels = torch.tensor(label_ids(ds, spec))
    return clf, predict_logits(clf, list(ds[spec.input_column]), batch_size), labels


def evaluate(model: str | Path, data: str | Path, *, text_column: str | None = None,
             image_column: str | None = None, label_column: str | None = None,
             split: str | None = None, batch_size: int = 64,
             dtype: str = "auto") -> dict[str, Any]:
    """Evaluate a model directory on a labelled dataset whose labels fit the model's, with
    the model in ``dtype`` (``auto``: bf16 on a GPU that has it, else fp32)."""
    clf, logits, labels = _scored(model, data, text_column, image_column, label_column, split,
                                  batch_size, dtype=dtype)
    out = classification_metrics(logits, labels, len(clf.label_names))
    out.update(model=str(model), data=str(data), architecture=clf.architecture)
    return out


def example_losses(model: str | Path, datasets: Sequence[str | Path], *,
                   text_column: str | None = None, image_column: str | None = None,
                   label_column: str | None = None, batch_size: int = 64
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-entropy of ``model`` (loaded once) on every example of each labelled dataset,
    with the examples' label ids: one ``(losses, labels)`` per dataset."""
    out, clf = [], None
    for data in datasets:
        clf, logits, labels = _scored(model, data, text_column, image_column, label_column,
                                      None, batch_size, clf)
        out.append((torch.nn.functional.cross_entropy(logits.float(), labels,
                                                      reduction="none").numpy(),
                    labels.numpy()))
    return out


def membership_inference(model: str | Path, members: str | Path, nonmembers: str | Path, *,
                         references: Sequence[str | Path] = (), match_labels: bool = False,
                         text_column: str | None = None, image_column: str | None = None,
                         label_column: str | None = None, batch_size: int = 64
                         ) -> dict[str, Any]:
    """Membership-inference attacks on ``model`` (see :mod:`fdcli.privacy`): ``members`` are
    examples it was trained on, ``nonmembers`` held-out examples from the same distribution.
    Always the loss-threshold attack; with ``references`` (models trained on population data
    that excludes both sets), the reference attack too. ``match_labels`` weights the
    non-members to the members' label mix (for members with skewed labels)."""
    from ..privacy import label_matched_weights, loss_threshold_attack, reference_attack

    kw = dict(text_column=text_column, image_column=image_column, label_column=label_column,
              batch_size=batch_size)
    (m, m_labels), (n, n_labels) = example_losses(model, [members, nonmembers], **kw)
    weights = label_matched_weights(m_labels, n_labels) if match_labels else None
    out: dict[str, Any] = {"model": str(model), "members": str(members),
                           "nonmembers": str(nonmembers), "match_labels": match_labels,
                           "loss_threshold": loss_threshold_attack(m, n, weights)}
    if references:
        ref = [example_losses(r, [members, nonmembers], **kw) for r in references]
        ref_m = [losses for (losses, _), _ in ref]
        ref_n = [losses for _, (losses, _) in ref]
        out["reference"] = {**reference_attack(m, n, ref_m, ref_n, weights),
                            "references": [str(r) for r in references]}
    return out
