"""The sequence-to-sequence versions of train-specialist, emit-logits, distill and evaluate,
and ``fd generate`` (targets for a proxy set that has none).

Every target token of every proxy pair is a row of a token bundle, teacher-forced on the
proxy's targets; the bundle's label space is the tokenizer's vocabulary, and the proxy
fingerprint covers every source and target id, so the teachers, the coordinator and the
student all work on exactly the same token sequences. Aggregation is the token path of
``fd aggregate`` unchanged.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .. import __version__
from ..bundle import BundleManifest, BundleWriter
from ..bundle.safeio import DEFAULT_LIMITS, Limits
from ..data import DataError, load_local
from ..devices import place
from ..identity import emitted_client_id, specialist_client_id
from ..launch import ranks
from ..adapters import Tuning
from ..lm import save_lm, vocab_fingerprint
from ..models import fingerprint_model
from ..outputs import atomic_dir, check_free
from ..progress import progress_bar
from ..seq2seq import (DEFAULT_SOURCE_LENGTH, DEFAULT_TARGET_LENGTH, TextPairs, generate,
                       iter_pair_logits, load_seq2seq, text_metrics, text_pairs, token_nll)
from .digest import (check_pair, check_round, consensus_record, digest_and_revisit,
                     round_config, round_meta)
from .lm import (LM_HARD_WEIGHT, check_vocab, stage_config, check_rows,
                 open_token_teacher, token_codec, token_digest)
from .parallel import batch_share, finish_parts, part_target, resume_start


def _lengths(m, max_source_length, max_target_length, saved: dict | None = None):
    """The lengths given, else those recorded (a bundle's or fd's training config), else the
    defaults."""
    saved = saved if saved is not None else m.meta.get("config", {})
    return (max_source_length or saved.get("max_source_length") or DEFAULT_SOURCE_LENGTH,
            max_target_length or saved.get("max_target_length") or DEFAULT_TARGET_LENGTH)


def _pairs(data, split, m, source_column, target_column, max_source_length,
           max_target_length, need_targets: bool = True, saved: dict | None = None
           ) -> TextPairs:
    src_len, tgt_len = _lengths(m, max_source_length, max_target_length, saved)
    ds = load_local(data, split)
    return text_pairs(ds, str(data), m.tokenizer, source_column=source_column,
                      target_column=target_column, need_targets=need_targets,
                      max_source_length=src_len, max_target_length=tgt_len)


def train_seq2seq_specialist(data: str | Path, model: str | Path, out: str | Path, *,
                             tokenizer: str | Path | None = None,
                             client_id: str | None = None, source_column: str | None = None,
                             target_column: str | None = None, split: str | None = None,
                             max_source_length: int | None = None,
                             max_target_length: int | None = None, epochs: float = 3.0,
                             learning_rate: float = 5e-5, batch_size: int = 16,
                             val_fraction: float = 0.0, seed: int = 0,
                             overwrite: bool = False, sign_key=None, progress: bool = True,
                             dtype: str = "auto", lora_rank: int | None = None,
                             lora_alpha: float | None = None,
                             lora_dropout: float | None = None,
                             lora_targets: str | None = None, lora_type: str | None = None,
                             quantize: str | None = None, merge: bool = False,
                             gradient_checkpointing: bool = False,
                             teacher: str | Path | None = None,
                             proxy: str | Path | None = None, digest_weight: float = 0.2,
                             schedule: str = "mixed", temperature: float | None = None,
                             trusted_keys: dict | None = None,
                             limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Train an encoder-decoder model (model folder, GGUF file or config file) on this
    institution's source/target pairs and write a model folder with its tokenizer and fd.json
    (configuration, vocabulary fingerprint, examples, target tokens, metrics; ``val_nll`` when
    ``val_fraction`` > 0). ``lora_rank`` trains a LoRA adapter, as for causal-lm. A later
    round (``teacher``, ``proxy``, ``digest_weight``, ``schedule``, ``temperature``,
    ``trusted_keys``) digests a token consensus on every target token of the proxy pairs, as
    :func:`~fdcli.stages.lm.train_lm_specialist` does on proxy blocks."""
    from ..training import fit_seq2seq

    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    check_free(Path(out), overwrite)
    check_pair(teacher, proxy)
    consensus = None
    if teacher is not None:
        check_round(digest_weight, schedule)
        consensus, temperature = open_token_teacher(teacher, out, "seq2seq", temperature,
                                                    1 - digest_weight, overwrite, limits,
                                                    trusted_keys, warn=False)
    tuning = Tuning.of(model, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_type,
                        quantize, merge, gradient_checkpointing)
    m = tuning.load(load_seq2seq, model, "seq2seq", tokenizer=tokenizer, seed=seed)
    pairs = _pairs(data, split, m, source_column, target_column, max_source_length,
                   max_target_length)
    config = stage_config(task="seq2seq", data=data, model=model, tokenizer=tokenizer,
                     client_id=client_id, source_column=pairs.source_column,
                     target_column=pairs.target_column, split=split,
                     max_source_length=pairs.max_source_length,
                     max_target_length=pairs.max_target_length, epochs=epochs,
                     learning_rate=learning_rate, batch_size=batch_size,
                     val_fraction=val_fraction, seed=seed, **tuning.record())
    digest = None
    if consensus is not None:  # the consensus's own pairs: its columns and lengths
        config |= stage_config(teacher=teacher, proxy=proxy, digest_weight=digest_weight,
                               schedule=schedule, temperature=temperature)
        check_vocab(m, consensus.manifest, model, teacher)
        proxy_pairs = _teacher_pairs(proxy, teacher, consensus.manifest, m, model, None, None,
                                     None, None, None)
        digest = token_digest(consensus, list(zip(proxy_pairs.sources, proxy_pairs.targets)),
                              temperature, proxy_pairs.targets, "target-token rows", "pair",
                              "no target")
    order = list(range(len(pairs.sources)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    if not train:
        raise DataError(f"{data}: no pairs left to train on after holding out {n_val}")
    with atomic_dir(out, overwrite, sign_key) as tmp:
        common = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                      seed=seed, progress=progress, dtype=dtype,
                      gradient_checkpointing=tuning.gradient_checkpointing)

        def fit(values, _labels, **kw):
            return fit_seq2seq(m, [v[0] for v in values], [v[1] for v in values], **common,
                               **kw)

        own = [(pairs.sources[i], pairs.targets[i]) for i in train]
        metrics = fit(own, None) if digest is None else \
            digest_and_revisit(fit, own, None, *digest, schedule, digest_weight)
        if val:
            held = TextPairs([pairs.sources[i] for i in val], [pairs.targets[i] for i in val],
                             [], None, pairs.source_column, pairs.target_column,
                             pairs.max_source_length, pairs.max_target_length, "")
            metrics["val_nll"] = token_nll(m, held, batch_size)["nll"]
        meta = {"fd_version": __version__, "stage": "train-specialist",
                "client_id": specialist_client_id(client_id, m.meta, out),
                "task": "seq2seq",
                "architecture": m.architecture, "vocab_size": m.vocab_size,
                "vocab_fingerprint": vocab_fingerprint(m.tokenizer),
                "train_examples": len(train),
                "train_tokens": sum(len(pairs.targets[i]) for i in train),
                "val_examples": len(val), "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(m.model)}
        if consensus is not None:
            meta |= round_meta(consensus_record(consensus, teacher), len(digest[0]))
        save_lm(m, tmp, meta, merge=tuning.merge)
    return meta


def emit_seq2seq_logits(model: str | Path, proxy: str | Path, out: str | Path, *,
                        encoding: str | None = None, k: int | None = None,
                        value_dtype: str = "int8", draws: int | None = None,
                        sample_temperature: float = 1.0,
                        tokenizer: str | Path | None = None, client_id: str | None = None,
                        source_column: str | None = None, target_column: str | None = None,
                        split: str | None = None, max_source_length: int | None = None,
                        max_target_length: int | None = None, batch_size: int = 8,
                        seed: int = 0, overwrite: bool = False, progress: bool = True,
                        limits: Limits = DEFAULT_LIMITS, sign_key=None,
                        dtype: str = "auto", resume: bool = False) -> BundleManifest:
    """Run an encoder-decoder model over the proxy pairs, teacher-forced on their targets,
    and write a token bundle with one row per target token (topk, sample or dense). Under a
    launcher each process writes a contiguous share of the batches, joined as for causal-lm
    (:func:`~fdcli.stages.lm.emit_token_logits`), and ``resume`` continues a killed or
    interrupted emit as there."""
    codec = token_codec(encoding, k, value_dtype, draws, sample_temperature)
    r = ranks()
    check_free(Path(out), overwrite)
    m = load_seq2seq(model, tokenizer=tokenizer)
    pairs = _pairs(proxy, split, m, source_column, target_column, max_source_length,
                   max_target_length)
    model_fp = m.fingerprint()
    config = stage_config(task="seq2seq", model=model, proxy=proxy, encoding=codec.name,
                     **codec.params(), dtype=place(m.model, dtype), batch_size=batch_size,
                     split=split, source_column=pairs.source_column,
                     target_column=pairs.target_column,
                     max_source_length=pairs.max_source_length,
                     max_target_length=pairs.max_target_length,
                     train_examples=m.meta.get("train_examples"),
                     train_tokens=m.meta.get("train_tokens"), **round_config(m.meta))
    target = part_target(out, r, config)
    mine = batch_share(len(pairs.sources), batch_size, r)
    with BundleWriter(target, codec=codec, task="token", num_classes=m.vocab_size,
                      label_fingerprint=vocab_fingerprint(m.tokenizer),
                      proxy_fingerprint=pairs.fingerprint,
                      client_id=emitted_client_id(client_id, m.meta, model, model_fp),
                      model_fingerprint=model_fp, config=config, seed=seed,
                      overwrite=overwrite, sign_key=sign_key, resume=resume) as writer, \
            progress_bar(sum(len(t) for t in pairs.targets[mine.start:mine.stop]),
                         "emitting target-token logits", progress and r.main) as advance:
        begin = resume_start(writer, mine.start, advance, lambda stop: sum(
            len(t) for t in pairs.targets[mine.start:stop]))
        sources, targets = pairs.sources[begin:mine.stop], pairs.targets[begin:mine.stop]
        for index, logits, counts, _ in iter_pair_logits(m, sources, targets, batch_size):
            writer.add(range(begin + index.start, begin + index.stop), logits,
                       row_counts=counts)
            advance(int(counts.sum()))
    return finish_parts(out, r, writer.manifest, overwrite, limits, sign_key)


def generate_targets(model: str | Path, proxy: str | Path, out: str | Path, *,
                     tokenizer: str | Path | None = None, source_column: str | None = None,
                     split: str | None = None, max_source_length: int | None = None,
                     max_target_length: int | None = None, batch_size: int = 16,
                     overwrite: bool = False, dtype: str = "auto") -> dict[str, Any]:
    """Write ``out`` (JSON lines: ``source``, ``target``): the proxy's sources with the
    model's greedy decodes as targets, for a proxy set that has none. Every teacher then emits
    teacher-forced on these same targets, and the student is distilled on them."""
    out = Path(out)
    if out.suffix.lower() not in (".jsonl", ".json"):
        raise ValueError(f"{out}: expected a .jsonl file to write the targets to")
    check_free(out, overwrite)
    m = load_seq2seq(model, tokenizer=tokenizer)
    place(m.model, dtype)
    pairs = _pairs(proxy, split, m, source_column, None, max_source_length, max_target_length,
                   need_targets=False)
    texts = generate(m, pairs.sources, batch_size=batch_size,
                     max_new_tokens=pairs.max_target_length)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps({"source": s, "target": t}) + "\n"
                           for s, t in zip(pairs.source_texts, texts)), encoding="utf-8")
    tmp.replace(out)
    return {"out": str(out), "examples": len(texts), "model": str(model),
            "empty_targets": sum(not t for t in texts)}


def _teacher_pairs(proxy, teacher, manifest: BundleManifest, m, model, split, source_column,
                   target_column, max_source_length, max_target_length) -> TextPairs:
    cfg = manifest.producer.config
    pairs = _pairs(proxy, split, m, source_column or cfg.get("source_column"),
                   target_column or cfg.get("target_column"), max_source_length,
                   max_target_length, saved=cfg)
    if pairs.fingerprint != manifest.proxy_fingerprint:
        raise DataError(f"{proxy}: these pairs ({pairs.describe()}) differ from the ones "
                        f"{teacher} was made on (fingerprint {pairs.fingerprint}, the bundle "
                        f"says {manifest.proxy_fingerprint}); use the same proxy file, "
                        "tokenizer, columns and lengths")
    return pairs



def distill_seq2seq(student: str | Path, proxy: str | Path, teacher: str | Path,
                    out: str | Path, *, tokenizer: str | Path | None = None,
                    temperature: float | None = None, hard_weight: float = LM_HARD_WEIGHT,
                    epochs: float = 3.0, learning_rate: float = 5e-5, batch_size: int = 8,
                    source_column: str | None = None, target_column: str | None = None,
                    split: str | None = None, seed: int = 0, overwrite: bool = False, sign_key=None,
                    progress: bool = True, limits: Limits = DEFAULT_LIMITS,
                    trusted_keys: dict | None = None, dtype: str = "auto",
                    lora_rank: int | None = None, lora_alpha: float | None = None,
                    lora_dropout: float | None = None, lora_targets: str | None = None,
                    lora_type: str | None = None, quantize: str | None = None,
                    merge: bool = False, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """Distill an encoder-decoder student sharing the teachers' tokenizer on the proxy pairs
    against a token bundle: per target token, the tail-bucket loss (topk), the sampled-target
    loss (sample) or full KL (dense) at ``temperature`` (None: picked from the teacher, as for
    causal-lm), mixed with ``hard_weight`` of cross-entropy on the proxy's target tokens."""
    from ..bundle import TeacherRows
    from ..training import fit_seq2seq

    tuning = Tuning.of(student, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_type,
                        quantize, merge, gradient_checkpointing)
    reader, temperature = open_token_teacher(teacher, out, "seq2seq", temperature,
                                             hard_weight, overwrite, limits, trusted_keys)
    mf = reader.manifest
    m = tuning.load(load_seq2seq, student, "seq2seq", tokenizer=tokenizer, seed=seed)
    check_vocab(m, mf, student, teacher)
    pairs = _teacher_pairs(proxy, teacher, mf, m, student, split, source_column,
                           target_column, None, None)
    block = reader.read_all()
    check_rows(block, pairs.targets, teacher, "target-token rows", "pair", "no target")
    ids = block.example_ids.tolist()
    config = stage_config(task="seq2seq", student=student, proxy=proxy, teacher=teacher,
                     tokenizer=tokenizer, temperature=temperature, hard_weight=hard_weight,
                     epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                     source_column=pairs.source_column, target_column=pairs.target_column,
                     max_source_length=pairs.max_source_length,
                     max_target_length=pairs.max_target_length, seed=seed,
                     **tuning.record())
    with atomic_dir(out, overwrite, sign_key) as tmp:
        metrics = fit_seq2seq(m, [pairs.sources[e] for e in ids],
                              [pairs.targets[e] for e in ids], epochs=epochs,
                              learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                              teacher=TeacherRows(block, temperature), example_ids=ids,
                              hard_weight=hard_weight, progress=progress, dtype=dtype,
                              gradient_checkpointing=tuning.gradient_checkpointing)
        meta = {"fd_version": __version__, "stage": "distill", "client_id": "student",
                "task": "seq2seq", "architecture": m.architecture,
                "vocab_size": m.vocab_size, "vocab_fingerprint": mf.label_fingerprint,
                "proxy_examples": len(ids), "proxy_tokens": block.rows,
                "teacher_manifest": mf.to_dict() | {"shards": len(mf.shards)},
                "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(m.model)}
        save_lm(m, tmp, meta, merge=tuning.merge)
    return meta


def evaluate_seq2seq(model: str | Path, data: str | Path, *,
                     tokenizer: str | Path | None = None, source_column: str | None = None,
                     target_column: str | None = None, split: str | None = None,
                     max_source_length: int | None = None,
                     max_target_length: int | None = None, batch_size: int = 8,
                     dtype: str = "auto") -> dict[str, Any]:
    """BLEU, chrF and ROUGE-L of the model's greedy decodes against the targets, and the
    teacher-forced NLL per target token (with perplexity and token accuracy)."""
    m = load_seq2seq(model, tokenizer=tokenizer)
    place(m.model, dtype)
    pairs = _pairs(data, split, m, source_column, target_column, max_source_length,
                   max_target_length)
    hypotheses = generate(m, pairs.sources, batch_size=max(batch_size, 16),
                          max_new_tokens=pairs.max_target_length)
    return {"model": str(model), "architecture": m.architecture, "examples": len(hypotheses),
            **text_metrics(hypotheses, pairs.target_texts),
            **token_nll(m, pairs, batch_size)}
