"""fd train-specialist: fine-tune a classifier on one institution's private data, and in later
rounds update it from the coordinator's consensus on the proxy set (see docs/rounds.md)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..adapters import Tuning
from ..data import label_ids, load_local, resolve
from ..dp import dp_settings, prior_history
from ..errors import IncompatibleBundlesError
from ..identity import specialist_client_id
from ..meta import read_fd_meta
from ..models import fingerprint_model, load_classifier, predict_logits, save_classifier
from ..outputs import atomic_dir
from .digest import (check_pair, check_round, consensus_record, digest_and_revisit,
                     round_meta)

def train_specialist(data: str | Path, model: str | Path, out: str | Path, *,
                     client_id: str | None = None, labels: list[str] | None = None,
                     text_column: str | None = None,
                     image_column: str | None = None, label_column: str | None = None,
                     tokenizer: str | Path | None = None, split: str | None = None,
                     epochs: float = 3.0, learning_rate: float = 5e-5, batch_size: int = 16,
                     val_fraction: float = 0.0, teacher: str | Path | None = None,
                     proxy: str | Path | None = None, proxy_split: str | None = None,
                     digest_weight: float = 0.2, schedule: str = "mixed",
                     temperature: float = 2.0, seed: int = 0, overwrite: bool = False,
                     sign_key=None, progress: bool = True, trusted_keys: dict | None = None,
                     dtype: str = "auto", lora_rank: int | None = None,
                     lora_alpha: float | None = None,
                     lora_dropout: float | None = None, lora_targets: str | None = None,
                     lora_type: str | None = None, quantize: str | None = None,
                     merge: bool = False, gradient_checkpointing: bool = False,
                     dp_epsilon: float | None = None, dp_delta: float = 1e-5,
                     max_grad_norm: float = 1.0) -> dict[str, Any]:
    """Train ``model`` (a model directory or a config file) on the labelled dataset ``data``
    and write a model directory to ``out``: weights, tokenizer or image processor, and fd.json
    with the configuration, the label names, the training label histogram and the metrics.

    ``labels`` names the federation's label space when this client's data may lack some
    labels (otherwise it is read from the data: a ClassLabel's names, or the sorted strings).

    A round after the first: given ``teacher`` (the coordinator's aggregated bundle, the
    consensus) and ``proxy`` (the proxy set it was made on), the model also learns the
    consensus on the proxy ("digest") while it trains on the private data ("revisit").
    ``schedule`` ``mixed`` (the default) shuffles proxy and private examples together and
    minimises ``digest_weight`` * KD(consensus, T=``temperature``) + (1 - ``digest_weight``)
    * CE per batch; ``alternate`` (FedMD) digests for ``epochs`` over the proxy, then
    revisits for ``epochs``. fd.json records the round and the consensus's sha256. With
    ``trusted_keys`` the consensus must be signed by one of them (the coordinator's key).
    ``dtype`` sets mixed precision (``auto``: bf16 on a GPU that has it); the saved weights
    stay fp32. ``lora_rank`` trains a LoRA adapter and the head
    (:class:`~fdcli.adapters.Tuning`) and writes an adapter folder, or merged weights with
    ``merge``.

    ``dp_epsilon`` trains with DP-SGD (:mod:`fdcli.dp`) to (``dp_epsilon``, ``dp_delta``)-DP
    per training example, gradients clipped to ``max_grad_norm``; fd.json records the
    guarantee under ``privacy``, and a model that already carries one composes with it
    (training it again on the same data spends from the same budget)."""
    from ..training import fit

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dict(
        data=data, model=model, client_id=client_id, labels=labels, text_column=text_column,
        image_column=image_column, label_column=label_column, tokenizer=tokenizer, split=split,
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        val_fraction=val_fraction, seed=seed).items()}
    tuning = Tuning.of(model, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_type,
                       quantize, merge, gradient_checkpointing)
    config.update(tuning.record())
    dp = dp_settings(dp_epsilon, dp_delta, max_grad_norm, teacher, tuning)
    if dp is not None:
        config.update(dp_epsilon=dp_epsilon, dp_delta=dp_delta, max_grad_norm=max_grad_norm)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    check_pair(teacher, proxy)
    consensus = None
    if teacher is not None:
        consensus = _open_consensus(teacher, digest_weight, schedule, temperature, out,
                                    overwrite, trusted_keys)
        config.update(teacher=str(teacher), proxy=str(proxy), proxy_split=proxy_split,
                      digest_weight=digest_weight, schedule=schedule, temperature=temperature)
    prior = []
    if Path(model).is_dir():  # a model fd trained names its label space, and its guarantee
        before = read_fd_meta(Path(model))
        labels = labels if labels is not None else before.get("label_names")
        prior = prior_history(before)
    ds = load_local(data, split)
    spec = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                   label_column=label_column, label_names=labels)
    clf = tuning.load(load_classifier, model, "classification", kind=spec.kind,
                      label_names=spec.label_names, tokenizer=tokenizer, seed=seed)
    labels = label_ids(ds, spec)
    values = list(ds[spec.input_column])
    order = list(range(len(values)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    train_values, train_labels = [values[i] for i in train], [labels[i] for i in train]
    digest = None
    if consensus is not None:
        digest = _digest_rows(consensus, clf, proxy, proxy_split, temperature, text_column,
                              image_column)
    with atomic_dir(out, overwrite, sign_key) as tmp:
        common = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                      seed=seed, progress=progress, dtype=dtype,
                      gradient_checkpointing=tuning.gradient_checkpointing)
        guarantee = None
        if dp is not None:
            metrics, guarantee = _private(clf, train_values, train_labels, dp, prior, data,
                                          **common)
        elif digest is None:
            metrics = fit(clf, train_values, train_labels, **common)
        else:
            proxy_values, rows, teacher_rows = digest
            metrics = digest_and_revisit(
                lambda v, y, **kw: fit(clf, v, y, **common, **kw), train_values,
                train_labels, proxy_values, rows, teacher_rows, schedule, digest_weight)
        if val:
            logits = predict_logits(clf, [values[i] for i in val])
            hits = sum(int(p == labels[i]) for p, i in zip(logits.argmax(-1).tolist(), val))
            metrics["val_accuracy"] = hits / len(val)
        histogram = Counter(clf.label_names[labels[i]] for i in train)
        meta = {"fd_version": __version__, "stage": "train-specialist",
                "client_id": specialist_client_id(client_id, clf.meta, out),
                "task": "classification",
                "kind": spec.kind, "label_names": clf.label_names,
                "label_histogram": {n: histogram.get(n, 0) for n in clf.label_names},
                "train_examples": len(train), "val_examples": len(val),
                "architecture": clf.architecture, "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(clf.model)}
        if consensus is not None:
            meta |= round_meta(consensus["record"], len(digest[0]))
        if guarantee is not None:
            meta["privacy"] = guarantee
        save_classifier(clf, tmp, meta, merge=tuning.merge)
    return meta


def _private(clf, values, labels, dp, prior, data, *, epochs, learning_rate, batch_size,
             seed, progress, dtype, gradient_checkpointing):
    """DP-SGD on the model inputs of every training example at once (Opacus samples them
    by index), in fp32 whatever ``dtype`` says."""
    from ..dp import private_fit
    from ..models import batch_inputs

    inputs = batch_inputs(clf, values)
    return private_fit(clf.model, inputs, labels, epochs=epochs, learning_rate=learning_rate,
                       batch_size=batch_size, seed=seed, dp=dp, prior=prior,
                       where=str(clf.architecture), progress=progress)


def _open_consensus(teacher, digest_weight, schedule, temperature, out, overwrite,
                    trusted_keys=None):
    """Check the round settings and open the consensus bundle: a classification bundle,
    identified by the sha256 of its manifest."""
    from .distill import open_teacher

    check_round(digest_weight, schedule)
    reader = open_teacher(teacher, out, task="classification", temperature=temperature,
                          hard_weight=1 - digest_weight, overwrite=overwrite,
                          trusted_keys=trusted_keys,
                          hint="a classifier digests a classification consensus")
    record = consensus_record(reader, teacher)
    return {"reader": reader, "record": record}


def _digest_rows(consensus, clf, proxy, proxy_split, temperature, text_column, image_column):
    """The proxy examples the consensus covers, checked against the model's label space."""
    from ..bundle import fingerprint_labels
    from .distill import proxy_teacher

    reader = consensus["reader"]
    m = reader.manifest
    if m.label_fingerprint != fingerprint_labels(clf.label_names):
        raise IncompatibleBundlesError(
            f"{reader.path}: the consensus is over the labels {m.label_space.get('names')}, "
            f"but the model's label space is {clf.label_names}; use the consensus of this "
            "federation")
    ds, spec, rows, teacher_rows = proxy_teacher(
        reader, proxy, split=proxy_split, temperature=temperature, text_column=text_column,
        image_column=image_column)
    if spec.kind != clf.kind:
        raise IncompatibleBundlesError(f"{proxy}: a {spec.kind} proxy set for a {clf.kind} "
                                       "model")
    all_values = list(ds[spec.input_column])
    ids = rows.tolist()
    return [all_values[i] for i in ids], ids, teacher_rows
