"""The embedding task: relational bundles (emit), relational students (distill), and probes
of an embedding (evaluate). See docs/embeddings.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..bundle import BundleManifest, BundleWriter, DenseCodec, TopKCodec
from ..bundle.safeio import DEFAULT_LIMITS, Limits
from ..data import DataError, fingerprint, label_ids, load_local, resolve
from ..devices import place
from ..embedding import (EMBEDDING_TEMPERATURE, anchor_ids, anchor_positions, check_pooling,
                         embed, load_encoder, neighbour_agreement, normalized, pick_anchors,
                         relation_logits)
from ..identity import emitted_client_id
from ..launch import ranks
from ..models import fingerprint_model, save_classifier
from ..outputs import atomic_dir
from ..progress import progress_bar
from .distill import open_teacher, proxy_teacher
from .parallel import batch_share, finish_parts, part_target, resume_start

ENCODINGS = ("topk", "dense")
DEFAULT_ANCHORS = 1024


def emit_embedding_logits(model: str | Path, proxy: str | Path, out: str | Path, *,
                          anchors: int | None = None,
                          temperature: float = EMBEDDING_TEMPERATURE, pooling: str = "mean",
                          encoding: str = "topk", k: int = 64, value_dtype: str = "int8",
                          client_id: str | None = None, text_column: str | None = None,
                          image_column: str | None = None, tokenizer: str | Path | None = None,
                          split: str | None = None, batch_size: int = 64, seed: int = 0,
                          overwrite: bool = False, progress: bool = True, sign_key=None,
                          dtype: str = "auto", resume: bool = False,
                          limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """Write the relational bundle of ``model``'s embeddings on ``proxy``: per example, its
    cosine similarities to ``anchors`` anchor examples (picked from the proxy set by
    :func:`~fdcli.embedding.pick_anchors` with ``seed``; default: 1,024, or the whole proxy
    set if it is smaller) divided by ``temperature``, kept as
    the top ``k`` (or dense). An anchor's similarity to itself is left out. The anchors' ids
    are the bundle's label space, so bundles aggregate only when their anchors agree.

    Under ``torchrun`` / ``accelerate launch`` every process embeds the anchors, takes a
    contiguous share of whole batches and writes a part, which process 0 merges into ``out``
    (as :func:`~fdcli.stages.emit.emit_logits` does); ``resume`` continues a killed or
    interrupted emit as there."""
    if encoding not in ENCODINGS:
        raise ValueError(f"--task embedding: encoding must be one of {list(ENCODINGS)}, got "
                         f"{encoding!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    check_pooling(pooling)
    ds = load_local(proxy, split)
    spec = resolve(ds, str(proxy), text_column=text_column, image_column=image_column,
                   need_labels=False)
    anchors = min(DEFAULT_ANCHORS, len(ds)) if anchors is None else anchors
    chosen = pick_anchors(len(ds), anchors, seed, str(proxy))
    enc = load_encoder(model, spec.kind, tokenizer=tokenizer)
    model_fp = enc.meta.get("model_fingerprint") or fingerprint_model(enc.model)
    dtype = place(enc.model, dtype)
    values = list(ds[spec.input_column])
    # the anchors first: a pooling the model cannot give fails before anything is written
    bank = embed(enc, [values[i] for i in chosen], pooling, batch_size)
    center = bank.mean(0)
    bank = normalized(bank, center)
    codec = DenseCodec() if encoding == "dense" else TopKCodec(k=min(k, anchors),
                                                               value_dtype=value_dtype)
    config: dict[str, Any] = {"task": "embedding", "model": str(model), "proxy": str(proxy),
                              "encoding": encoding, "dtype": dtype, "batch_size": batch_size,
                              "split": split, "input_column": spec.input_column,
                              "anchors": anchors, "anchor_seed": seed,
                              "temperature": temperature, "pooling": pooling,
                              "embedding_dim": int(bank.shape[1]),
                              "train_examples": enc.meta.get("train_examples")}
    if encoding == "topk":
        config.update(k=min(k, anchors), value_dtype=value_dtype)
    first, stop = 0, len(values)
    r = ranks()
    target = part_target(out, r, config)
    if r.world > 1:
        mine = batch_share(stop, batch_size, r)
        first, stop = mine.start, mine.stop
    step = batch_size * max(1, 1024 // batch_size)  # chunks of whole batches
    with BundleWriter(target, codec=codec, task="embedding", num_classes=anchors,
                      label_names=[str(a) for a in chosen],
                      proxy_fingerprint=fingerprint(ds, spec),
                      client_id=emitted_client_id(client_id, enc.meta, model, model_fp),
                      model_fingerprint=model_fp, config=config, seed=seed,
                      overwrite=overwrite, sign_key=sign_key, resume=resume) as writer, \
            progress_bar(stop - first, "emitting relations", progress and r.main) as advance:
        for start in range(resume_start(writer, first, advance), stop, step):
            ids = range(start, min(start + step, stop))
            z = embed(enc, values[ids.start:ids.stop], pooling, batch_size, advance)
            writer.add(ids, relation_logits(z, bank, center, temperature,
                                            anchor_positions(ids, chosen)))
    return finish_parts(out, r, writer.manifest, overwrite, limits, sign_key)


def distill_embedding(student: str | Path, proxy: str | Path, teacher: str | Path,
                      out: str | Path, *, temperature: float = 1.0, epochs: float = 3.0,
                      learning_rate: float = 5e-5, batch_size: int = 16, bank: str = "epoch",
                      momentum: float = 0.99, pooling: str | None = None, seed: int = 0,
                      text_column: str | None = None, image_column: str | None = None,
                      tokenizer: str | Path | None = None, split: str | None = None,
                      overwrite: bool = False, sign_key=None, progress: bool = True,
                      limits: Limits = DEFAULT_LIMITS, trusted_keys: dict | None = None,
                      dtype: str = "auto") -> dict[str, Any]:
    """Distill an encoder of any architecture and width (folder or config file) from a
    relational bundle: its own similarity distribution over the bundle's anchors (cosine at
    the bundle's temperature, anchors from a ``bank``: see :mod:`fdcli.relational`) is
    trained against the teacher's with the tail-bucket (topk) or dense KL. ``temperature``
    is the KD temperature applied to both sides on top of the bundle's (1: as emitted).
    ``pooling`` defaults to the bundle's."""
    from ..relational import RelationalStudent
    from ..training import fit_relational

    reader = open_teacher(teacher, out, task="embedding", temperature=temperature,
                          hard_weight=0.0, overwrite=overwrite, limits=limits,
                          trusted_keys=trusted_keys,
                          hint="an embedding student is distilled from a relational bundle "
                               "(fd emit-logits --task embedding, then fd aggregate)")
    m = reader.manifest
    made = m.producer.config
    anchors = anchor_ids(m.label_space, f"{reader.path}/manifest.json")
    emit_t = made.get("temperature")
    if not (isinstance(emit_t, (int, float)) and not isinstance(emit_t, bool) and emit_t > 0):
        raise DataError(f"{reader.path}/manifest.json: producer.config.temperature must be the "
                        f"positive temperature the relations were emitted at, found "
                        f"{emit_t!r}")
    pooling = check_pooling(pooling or made.get("pooling") or "mean")
    ds, spec, rows, teacher_rows = proxy_teacher(
        reader, proxy, split=split, temperature=temperature, text_column=text_column,
        image_column=image_column)
    if max(anchors) >= len(ds):
        raise DataError(f"{reader.path}: anchor example id {max(anchors)} is past the end of "
                        f"the {len(ds)}-example proxy set")
    enc = load_encoder(student, spec.kind, tokenizer=tokenizer, seed=seed)
    all_values = list(ds[spec.input_column])
    relational = RelationalStudent(enc, [all_values[a] for a in anchors], pooling=pooling,
                                   temperature=float(emit_t), bank=bank, momentum=momentum,
                                   refresh=batch_size, batch_size=max(batch_size, 64))
    ids = rows.tolist()
    config = {"student": str(student), "proxy": str(proxy), "teacher": str(teacher),
              "temperature": temperature, "emit_temperature": emit_t, "pooling": pooling,
              "bank": bank, "momentum": momentum if bank == "momentum" else None,
              "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
              "seed": seed}
    with atomic_dir(out, overwrite, sign_key) as tmp:
        metrics = fit_relational(relational, [all_values[i] for i in ids],
                                 anchor_positions(ids, anchors).tolist(), epochs=epochs,
                                 learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                                 teacher=teacher_rows, example_ids=ids, progress=progress,
                                 dtype=dtype)
        metrics["bank_refreshes"] = relational.refreshes
        meta = {"fd_version": __version__, "stage": "distill", "client_id": "student",
                "task": "embedding", "kind": spec.kind, "pooling": pooling,
                "architecture": enc.architecture, "proxy_examples": len(ids),
                "anchors": len(anchors),
                "teacher_manifest": m.to_dict() | {"shards": len(m.shards)},
                "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(enc.model)}
        save_classifier(enc, tmp, meta)
    return meta


def labelled_embeddings(model: str | Path, datasets: Sequence[str | Path], *,
                        pooling: str | None = None, text_column: str | None = None,
                        image_column: str | None = None, label_column: str | None = None,
                        tokenizer: str | Path | None = None, split: str | None = None,
                        batch_size: int = 64, dtype: str = "auto"):
    """``model`` (loaded once) on each labelled dataset: ``([(embeddings [N, d], label ids
    [N]), ...], label names, pooling)``. Later datasets must fit the first one's label
    space; ``pooling`` defaults to the one fd.json records, else mean."""
    found, names, enc = [], None, None
    for data in datasets:
        ds = load_local(data, split)
        spec = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                       label_column=label_column, label_names=names)
        if enc is None:
            enc = load_encoder(model, spec.kind, tokenizer=tokenizer)
            pooling = check_pooling(pooling or enc.meta.get("pooling") or "mean")
            place(enc.model, dtype)
        names = spec.label_names
        found.append((embed(enc, list(ds[spec.input_column]), pooling, batch_size),
                      torch.tensor(label_ids(ds, spec))))
    return found, names, pooling


def probe_scores(train_z, train_y, test_z, test_y, knn: int = 5) -> dict[str, float]:
    """Linear-probe (standardised features, logistic regression) and k-NN (cosine) accuracy
    of embeddings fitted on ``train`` and scored on ``test`` (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train_z.numpy(), train_y.numpy())
    near = KNeighborsClassifier(n_neighbors=min(knn, len(train_y)), metric="cosine")
    near.fit(train_z.numpy(), train_y.numpy())
    return {"linear_probe_accuracy": float(probe.score(test_z.numpy(), test_y.numpy())),
            "knn_accuracy": float(near.score(test_z.numpy(), test_y.numpy()))}


def evaluate_embedding(model: str | Path, data: str | Path, *,
                       probe_train: str | Path | None = None, teacher: str | Path | None = None,
                       pooling: str | None = None, teacher_pooling: str | None = None,
                       knn: int = 5, neighbours: int = 10, folds: int = 5,
                       text_column: str | None = None, image_column: str | None = None,
                       label_column: str | None = None, tokenizer: str | Path | None = None,
                       split: str | None = None, batch_size: int = 64,
                       dtype: str = "auto", seed: int = 0) -> dict[str, Any]:
    """k-NN accuracy and linear-probe accuracy of ``model``'s embeddings on the labelled
    ``data``: probes fitted on ``probe_train`` (labelled, same label space) and scored on
    ``data``, or without it ``folds``-fold stratified cross-validation on ``data``. With
    ``teacher`` (another model of the same input kind), the share of each example's
    ``neighbours`` nearest neighbours in ``data`` the two embeddings agree on."""
    if knn < 1 or neighbours < 1 or folds < 2:
        raise ValueError(f"knn and neighbours must be >= 1 and folds >= 2; got {knn}, "
                         f"{neighbours} and {folds}")
    kw = dict(text_column=text_column, image_column=image_column, label_column=label_column,
              tokenizer=tokenizer, split=split, batch_size=batch_size, dtype=dtype)
    found, _, used = labelled_embeddings(
        model, [data] + ([probe_train] if probe_train is not None else []), pooling=pooling,
        **kw)
    z, y = found[0]
    out: dict[str, Any] = {"model": str(model), "data": str(data), "pooling": used,
                           "examples": len(y), "embedding_dim": int(z.shape[1]), "knn": knn}
    if probe_train is not None:
        tz, ty = found[1]
        out.update(probe_scores(tz, ty, z, y, knn), probe=f"fitted on {probe_train}")
    else:
        out.update(_cross_validated(z, y, knn, folds, seed),
                   probe=f"{folds}-fold cross-validation")
    if teacher is not None:
        k = min(neighbours, len(y) - 1)
        if k < 1:
            raise DataError(f"{data}: neighbour agreement needs at least two examples")
        (tz, _), = labelled_embeddings(teacher, [data], pooling=teacher_pooling, **kw)[0]
        out.update(teacher=str(teacher), neighbours=k,
                   neighbour_agreement=neighbour_agreement(z, tz, k),
                   neighbour_agreement_chance=k / (len(y) - 1))
    return out


def _cross_validated(z, y, knn: int, folds: int, seed: int) -> dict[str, float]:
    from sklearn.model_selection import StratifiedKFold

    counts = torch.bincount(y)
    folds = min(folds, int(counts[counts > 0].min()))
    if folds < 2:
        raise DataError("cross-validated probes need at least two examples of every label; "
                        "give a labelled --probe-train set")
    scores = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y):
        train, test = torch.as_tensor(train), torch.as_tensor(test)
        scores.append(probe_scores(z[train], y[train], z[test], y[test], knn))
    return {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}
