"""fd distill: train a student on the proxy set against an aggregated bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__
from ..adapters import Tuning
from ..bundle import read_bundle
from ..bundle.safeio import DEFAULT_LIMITS, Limits
from ..bundle.signing import check_signature
from ..data import DataError, fingerprint, label_ids, load_local, resolve
from ..errors import IncompatibleBundlesError
from ..models import fingerprint_model, load_classifier, save_classifier
from ..outputs import atomic_dir, check_free


def open_teacher(teacher: str | Path, out: str | Path, *, task: str, temperature: float,
                 hard_weight: float, overwrite: bool, hint: str,
                 limits: Limits = DEFAULT_LIMITS, trusted_keys: dict | None = None):
    """Check the loss settings and the output folder, then open the teacher bundle within
    ``limits``, refusing one of another ``task`` (``hint`` says what to use instead) and,
    with ``trusted_keys``, one not signed by a trusted key."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0 <= hard_weight <= 1:
        raise ValueError(f"hard_weight must be in [0, 1], got {hard_weight}")
    check_free(Path(out), overwrite)
    reader = read_bundle(teacher, limits)
    check_signature(reader.path, reader.manifest_bytes, trusted_keys, limits)
    if reader.manifest.task != task:
        raise IncompatibleBundlesError(f"{teacher}: task {reader.manifest.task!r}; {hint}")
    return reader


def proxy_teacher(reader, proxy: str | Path, *, split: str | None, temperature: float,
                  text_column: str | None = None, image_column: str | None = None,
                  label_column: str | None = None, need_labels: bool = False):
    """Load the proxy dataset a classification bundle was made on and the bundle's rows for
    it: ``(dataset, spec, example ids [N], TeacherRows)``. Refuses a proxy set whose
    fingerprint differs from the bundle's, and example ids past its end."""
    from ..bundle import TeacherRows

    m = reader.manifest
    ds = load_local(proxy, split)
    spec = resolve(ds, str(proxy), text_column=text_column, image_column=image_column,
                   label_column=label_column,
                   label_names=m.label_space.get("names") if m.task == "classification" else None,
                   need_labels=need_labels)
    found = fingerprint(ds, spec)
    if found != m.proxy_fingerprint:
        raise DataError(f"{proxy}: this proxy dataset differs from the one {reader.path} was "
                        f"made on (fingerprint {found}, the bundle says "
                        f"{m.proxy_fingerprint}); use the same proxy set, in the same order")
    block = reader.read_all()
    rows = block.example_ids.long()
    if int(rows.max()) >= len(ds):
        raise DataError(f"{reader.path}: example id {int(rows.max())} is past the end of the "
                        f"{len(ds)}-example proxy set")
    return ds, spec, rows, TeacherRows(block, temperature)


def distill(student: str | Path, proxy: str | Path, teacher: str | Path, out: str | Path, *,
            temperature: float = 2.0, hard_weight: float = 0.0, epochs: float = 3.0,
            learning_rate: float = 5e-5, batch_size: int = 16, seed: int = 0,
            text_column: str | None = None, image_column: str | None = None,
            label_column: str | None = None, tokenizer: str | Path | None = None,
            split: str | None = None, overwrite: bool = False, sign_key=None,
            progress: bool = True, limits: Limits = DEFAULT_LIMITS,
            trusted_keys: dict | None = None, dtype: str = "auto",
            lora_rank: int | None = None, lora_alpha: float | None = None,
            lora_dropout: float | None = None, lora_targets: str | None = None,
            lora_type: str | None = None, quantize: str | None = None,
            merge: bool = False, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """Distill ``student`` (model directory or config file, any architecture) on ``proxy``
    against the teacher bundle. The soft loss is KL at ``temperature`` times T^2; topk
    teachers use the tail-bucket loss. ``hard_weight`` > 0 mixes in cross-entropy on the
    proxy labels, which the proxy must then have. ``limits`` and ``trusted_keys`` are as in
    :func:`open_teacher`. ``dtype`` sets mixed precision (the saved weights stay fp32).
    ``lora_rank`` trains a LoRA adapter on a pretrained student, as train-specialist does."""
    from ..training import fit

    tuning = Tuning.of(student, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_type,
                       quantize, merge, gradient_checkpointing)

    reader = open_teacher(teacher, out, task="classification", temperature=temperature,
                          hard_weight=hard_weight, overwrite=overwrite, limits=limits,
                          trusted_keys=trusted_keys,
                          hint="a classifier is distilled from a classification bundle (for a "
                               "token bundle, distill a causal LM with --task causal-lm)")
    m = reader.manifest
    names = m.label_space.get("names")
    ds, spec, rows, teacher_rows = proxy_teacher(
        reader, proxy, split=split, temperature=temperature, text_column=text_column,
        image_column=image_column, label_column=label_column, need_labels=hard_weight > 0)
    clf = tuning.load(load_classifier, student, "classification", kind=spec.kind,
                      label_names=names, tokenizer=tokenizer, seed=seed)
    all_values = list(ds[spec.input_column])
    values = [all_values[int(i)] for i in rows]
    labels = None
    if hard_weight > 0:
        all_labels = label_ids(ds, spec)
        labels = [all_labels[int(i)] for i in rows]
    config = {"student": str(student), "proxy": str(proxy), "teacher": str(teacher),
              "temperature": temperature, "hard_weight": hard_weight, "epochs": epochs,
              "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed,
              **tuning.record()}
    with atomic_dir(out, overwrite, sign_key) as tmp:
        metrics = fit(clf, values, labels, epochs=epochs, learning_rate=learning_rate,
                      batch_size=batch_size, seed=seed, teacher=teacher_rows,
                      example_ids=rows.tolist(), hard_weight=hard_weight,
                      progress=progress, dtype=dtype,
                      gradient_checkpointing=tuning.gradient_checkpointing)
        meta = {"fd_version": __version__, "stage": "distill", "client_id": "student",
                "task": "classification", "kind": spec.kind, "label_names": clf.label_names,
                "architecture": clf.architecture, "proxy_examples": len(values),
                "teacher_manifest": m.to_dict() | {"shards": len(m.shards)},
                "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(clf.model)}
        save_classifier(clf, tmp, meta, merge=tuning.merge)
    return meta
