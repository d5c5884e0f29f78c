"""fd emit-logits: run a model over the proxy dataset and write a logit bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle import BundleManifest, BundleWriter, DenseCodec, TopKCodec
from ..data import load_local, resolve, fingerprint
from ..bundle.safeio import DEFAULT_LIMITS, Limits
from ..devices import place
from ..identity import emitted_client_id
from ..launch import ranks
from ..models import ModelError, fingerprint_model, load_classifier, predict_logits
from ..progress import progress_bar
from .digest import round_config
from .parallel import batch_share, finish_parts, part_target, resume_start

ENCODINGS = ("dense", "topk")


def emit_logits(model: str | Path, proxy: str | Path, out: str | Path, *,
                encoding: str = "dense", k: int = 16, value_dtype: str = "int8",
                client_id: str | None = None, declare_label_counts: bool = False,
                text_column: str | None = None,
                image_column: str | None = None, split: str | None = None,
                batch_size: int = 64, proxy_slice: tuple[int, int] | None = None,
                seed: int = 0, overwrite: bool = False,
                progress: bool = True, sign_key=None, dtype: str = "auto",
                resume: bool = False, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """Write the bundle of ``model``'s predictions on every example of ``proxy``.

    ``declare_label_counts`` copies the model's training label histogram (from its fd.json)
    into the manifest, for the ``coverage`` aggregation rule. It discloses the client's class
    mix to whoever reads the bundle, so it is off unless asked for, and refused for a DP
    model (fd.json ``privacy``): the bundle carries that guarantee in
    ``producer.config.privacy`` and leaves the training-example count out.

    ``proxy_slice`` ``(i, n)`` emits only the i-th of n contiguous slices of the proxy set
    (1-based; example ids stay those of the whole set), so that each round of a federation
    can use a fresh slice (docs/rounds.md). ``sign_key`` (an Ed25519 private key,
    :func:`fdcli.bundle.signing.load_private_key`) signs the manifest. ``dtype`` is the
    model's (``auto``: bf16 on a GPU that has it, else fp32); logits are encoded in fp32.

    Under ``torchrun`` / ``accelerate launch`` each process takes a contiguous share of whole
    batches and writes a part, which process 0 merges into ``out`` (as
    :func:`~fdcli.stages.lm.emit_token_logits` does).

    ``resume`` continues an emit of ``out`` with the same settings that was killed or
    interrupted, from its last complete shard (:class:`~fdcli.bundle.BundleWriter`)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    ds = load_local(proxy, split)
    spec = resolve(ds, str(proxy), text_column=text_column, image_column=image_column,
                   need_labels=False)
    clf = load_classifier(model, spec.kind, None)
    # the weights as stored, before any change of dtype
    model_fp = clf.meta.get("model_fingerprint") or fingerprint_model(clf.model)
    dtype = place(clf.model, dtype)
    codec = DenseCodec() if encoding == "dense" else TopKCodec(k=k, value_dtype=value_dtype)
    privacy = clf.meta.get("privacy")
    config: dict[str, Any] = {"model": str(model), "proxy": str(proxy), "encoding": encoding,
                              "dtype": dtype, "batch_size": batch_size, "split": split,
                              "input_column": spec.input_column,
                              # a DP model's count is outside its guarantee: not disclosed
                              "train_examples": None if privacy else
                              clf.meta.get("train_examples")}
    if privacy:  # the bundle is post-processing of the DP model: the same guarantee
        config["privacy"] = privacy
    if declare_label_counts and privacy:
        raise ModelError(f"{model}: --declare-label-counts would disclose the training label "
                         "histogram of a DP model, which its guarantee does not cover (fd "
                         "does not noise it); emit without it and aggregate with a rule that "
                         "needs no counts (confidence, mean, median, trimmed-mean)")
    if declare_label_counts:
        histogram = clf.meta.get("label_histogram")
        if not isinstance(histogram, dict):
            raise ModelError(f"{model}: --declare-label-counts needs the model's training "
                             "label histogram, which fd.json holds for models trained by fd "
                             "train-specialist; found none")
        config["label_histogram"] = histogram
    config |= round_config(clf.meta)  # rounds: which consensus the model digested
    if encoding == "topk":
        config.update(k=k, value_dtype=value_dtype)
    values = list(ds[spec.input_column])
    first, stop = slice_bounds(proxy_slice, len(values))
    if proxy_slice is not None:
        config["proxy_slice"] = list(proxy_slice)
    r = ranks()
    target = part_target(out, r, config)
    if r.world > 1:
        mine = batch_share(stop - first, batch_size, r)
        first, stop = first + mine.start, first + mine.stop
    # chunks of whole batches, so that a process's batches are a one-process emit's
    step = batch_size * max(1, 1024 // batch_size)
    with BundleWriter(target, codec=codec, task="classification",
                      num_classes=len(clf.label_names), label_names=clf.label_names,
                      proxy_fingerprint=fingerprint(ds, spec),
                      client_id=emitted_client_id(client_id, clf.meta, model, model_fp),
                      model_fingerprint=model_fp,
                      config=config, seed=seed, overwrite=overwrite,
                      sign_key=sign_key, resume=resume) as writer, \
            progress_bar(stop - first, "emitting logits", progress and r.main) as advance:
        begin = resume_start(writer, first, advance)
        for start in range(begin, stop, step):
            chunk = values[start:min(start + step, stop)]
            logits = predict_logits(clf, chunk, batch_size, progress=advance)
            writer.add(range(start, start + len(chunk)), logits)
    return finish_parts(out, r, writer.manifest, overwrite, limits, sign_key)


def slice_bounds(proxy_slice: tuple[int, int] | None, size: int) -> tuple[int, int]:
    """The example range ``[first, stop)`` of slice ``(i, n)`` (1-based) of ``size`` examples:
    slice i holds examples ``floor((i-1) * size / n)`` up to ``floor(i * size / n)``."""
    if proxy_slice is None:
        return 0, size
    i, n = proxy_slice
    if not (isinstance(i, int) and isinstance(n, int) and 1 <= i <= n <= size):
        raise ValueError(f"proxy slice must be I/N with 1 <= I <= N <= {size} (the proxy "
                         f"set's size), got {i}/{n}")
    return (i - 1) * size // n, i * size // n
