"""fd train-specialist: fine-tune a classifier on one institution's private data."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..data import label_ids, load_local, resolve
from ..models import fingerprint_model, load_classifier, predict_logits, save_classifier
from ..outputs import atomic_dir


def train_specialist(data: str | Path, model: str | Path, out: str | Path, *,
                     client_id: str | None = None, labels: list[str] | None = None,
                     text_column: str | None = None,
                     image_column: str | None = None, label_column: str | None = None,
                     tokenizer: str | Path | None = None, split: str | None = None,
                     epochs: float = 3.0, learning_rate: float = 5e-5, batch_size: int = 16,
                     val_fraction: float = 0.0, seed: int = 0, overwrite: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Train ``model`` (a model directory or a config file) on the labelled dataset ``data``
    and write a model directory to ``out``: weights, tokenizer or image processor, and fd.json
    with the configuration, the label names, the training label histogram and the metrics.

    ``labels`` names the federation's label space when this client's data may lack some
    labels (otherwise it is read from the data: a ClassLabel's names, or the sorted strings)."""
    from ..training import fit

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dict(
        data=data, model=model, client_id=client_id, labels=labels, text_column=text_column,
        image_column=image_column, label_column=label_column, tokenizer=tokenizer, split=split,
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        val_fraction=val_fraction, seed=seed).items()}
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ds = load_local(data, split)
    spec = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                   label_column=label_column, label_names=labels)
    clf = load_classifier(model, spec.kind, spec.label_names, tokenizer=tokenizer, seed=seed)
    labels = label_ids(ds, spec)
    values = list(ds[spec.input_column])
    order = list(range(len(values)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    with atomic_dir(out, overwrite) as tmp:
        metrics = fit(clf, [values[i] for i in train], [labels[i] for i in train], epochs=epochs,
                      learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                      progress=progress)
        if val:
            logits = predict_logits(clf, [values[i] for i in val])
            hits = sum(int(p == labels[i]) for p, i in zip(logits.argmax(-1).tolist(), val))
            metrics["val_accuracy"] = hits / len(val)
        histogram = Counter(clf.label_names[labels[i]] for i in train)
        meta = {"fd_version": __version__, "stage": "train-specialist",
                "client_id": client_id or Path(out).name, "task": "classification",
                "kind": spec.kind, "label_names": clf.label_names,
                "label_histogram": {n: histogram.get(n, 0) for n in clf.label_names},
                "train_examples": len(train), "val_examples": len(val),
                "architecture": clf.architecture, "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(clf.model)}
        save_classifier(clf, tmp, meta)
    return meta
