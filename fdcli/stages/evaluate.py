"""fd evaluate: task quality and calibration of any classifier on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import label_ids, load_local, resolve
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


def evaluate(model: str | Path, data: str | Path, *, text_column: str | None = None,
             image_column: str | None = None, label_column: str | None = None,
             split: str | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Evaluate a model directory on a labelled dataset whose labels fit the model's."""
    ds = load_local(data, split)
    probe = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                    label_column=label_column)
    clf = load_classifier(model, probe.kind, None)
    names = clf.label_names
    spec = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                   label_column=label_column, label_names=names)
    labels = torch.tensor(label_ids(ds, spec))
    logits = predict_logits(clf, list(ds[spec.input_column]), batch_size)
    out = classification_metrics(logits, labels, len(names))
    out.update(model=str(model), data=str(data), architecture=clf.architecture)
    return out
