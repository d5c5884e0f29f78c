"""The causal-LM (token-level) versions of train-specialist, emit-logits, distill and evaluate.

Every token position of every proxy block is a row of the bundle; padding is never stored.
Bundles carry the tokenizer's vocabulary fingerprint as their label space, and the proxy
fingerprint covers the vocabulary and every block, so a student can only be distilled on
exactly the token sequences the teachers scored.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

from .. import __version__
from ..bundle import BundleManifest, BundleWriter, DenseCodec, SampleCodec, TopKCodec, read_bundle
from ..bundle.safeio import DEFAULT_LIMITS, Limits
from ..data import DataError, load_local
from ..devices import place
from ..identity import emitted_client_id, specialist_client_id
from ..launch import ranks
from ..errors import FdWarning, IncompatibleBundlesError
from ..chat import MESSAGES_COLUMN, chat_blocks
from ..lm import (DEFAULT_LM_MAX_LENGTH, TextBlocks, iter_token_logits, load_lm,
                  max_positions, row_count, save_lm, text_blocks, vocab_fingerprint)
from ..adapters import Tuning
from ..models import fingerprint_model
from ..outputs import atomic_dir, check_free
from ..progress import progress_bar
from .digest import (check_pair, check_round, consensus_record, digest_and_revisit,
                     round_config, round_meta)
from .distill import open_teacher
from .lm_scores import teacher_agreement, token_metrics
from .parallel import batch_share, finish_parts, part_target, resume_start

TOKEN_ENCODINGS = ("topk", "sample", "dense")
#: defaults chosen by benchmarks/lm_cli_defaults.py (docs/token-distillation.md): top-16
#: bundles (8 draws per token for ``sample``), and a student trained on KD mixed half and half
#: with cross-entropy on the proxy text's next tokens, at T = 1, or T = 2 for a flat top-k
#: teacher (mean tail mass above FLAT_TEACHER_TAIL_MASS; see :func:`default_temperature`)
LM_ENCODING = "topk"
LM_DRAWS = 8
LM_HARD_WEIGHT = 0.5
FLAT_TEACHER_TAIL_MASS = 0.75
#: ``fd distill`` warns when a top-k teacher leaves more than this share of its mass in the tail
WEAK_TEACHER_TAIL_MASS = 0.5


def _blocks(data, split, lm, text_column, max_length, packing, model=None, *,
            prompt_column=None, response_column=None, per_document=False) -> TextBlocks:
    """The token blocks of ``data``, checked to fit the model's positions: instruction
    examples (:func:`~fdcli.lm.chat_blocks`) when ``prompt_column``/``response_column`` are
    given or the data has a ``messages`` column and no ``text_column`` is asked for, else raw
    text. ``max_length`` None means the length the model was trained with by fd, else 128 (or
    the model's positions, if fewer)."""
    limit = max_positions(lm.model)
    if max_length is None:
        max_length = lm.meta.get("config", {}).get("max_length") or min(
            DEFAULT_LM_MAX_LENGTH, limit or DEFAULT_LM_MAX_LENGTH)
    if limit is not None and max_length > limit:
        raise DataError(f"{model or 'the model'}: it reads at most {limit} positions, but "
                        f"--max-length is {max_length}; expected a --max-length of at most "
                        f"{limit}")
    ds = load_local(data, split, whole_text_files=True)
    if prompt_column is not None or response_column is not None or (
            text_column is None and MESSAGES_COLUMN in ds.column_names):
        return chat_blocks(ds, str(data), lm.tokenizer, prompt_column=prompt_column,
                           response_column=response_column, max_length=max_length)
    return text_blocks(ds, str(data), lm.tokenizer, text_column=text_column,
                       max_length=max_length, packing=packing, per_document=per_document)


def rows_config(tb: TextBlocks) -> dict[str, Any]:
    """What a manifest or fd.json records of the rows: which tokens carry them."""
    return {"rows": "response tokens" if tb.chat else "every token",
            "text_column": tb.text_column}


def stage_config(**kwargs) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}


def train_lm_specialist(data: str | Path, model: str | Path, out: str | Path, *,
                        tokenizer: str | Path | None = None, client_id: str | None = None,
                        text_column: str | None = None, split: str | None = None,
                        prompt_column: str | None = None,
                        response_column: str | None = None,
                        max_length: int | None = None, packing: bool = True,
                        epochs: float = 3.0, learning_rate: float = 5e-5, batch_size: int = 16,
                        val_fraction: float = 0.0, seed: int = 0, overwrite: bool = False,
                        sign_key=None, progress: bool = True, dtype: str = "auto",
                        lora_rank: int | None = None, lora_alpha: float | None = None,
                        lora_dropout: float | None = None, lora_targets: str | None = None,
                        lora_type: str | None = None, quantize: str | None = None,
                        merge: bool = False, gradient_checkpointing: bool = False,
                        teacher: str | Path | None = None, proxy: str | Path | None = None,
                        digest_weight: float = 0.2, schedule: str = "mixed",
                        temperature: float | None = None, trusted_keys: dict | None = None,
                        limits: Limits = DEFAULT_LIMITS, dp_epsilon: float | None = None,
                        dp_delta: float = 1e-5, max_grad_norm: float = 1.0) -> dict[str, Any]:
    """Train a causal LM (model folder, GGUF file or config file) on this institution's text
    and write a model folder with its tokenizer and fd.json (configuration, vocabulary
    fingerprint, examples, tokens, metrics; ``val_perplexity`` when ``val_fraction`` > 0).
    ``dtype`` sets mixed precision (the saved weights stay fp32). ``lora_rank`` trains a
    LoRA adapter (:class:`~fdcli.adapters.Tuning`) and writes an adapter folder, or merged
    weights with ``merge``.

    A round after the first: given ``teacher`` (the coordinator's token consensus) and
    ``proxy`` (the proxy text it was made on), the model also learns the consensus on every
    token of the proxy blocks while it trains on its own text, as a classifier does
    (:mod:`fdcli.stages.digest`: ``schedule``, ``digest_weight``; ``temperature`` None picks
    one from the consensus as ``fd distill`` does). With ``trusted_keys`` the consensus must
    be signed by one of them.

    ``dp_epsilon`` trains with DP-SGD (:func:`~fdcli.dp.private_lm_fit`) to (``dp_epsilon``,
    ``dp_delta``)-DP, gradients clipped to ``max_grad_norm``. Its unit is one block, and
    under DP no block holds two documents (each is cut alone): one instruction example,
    one document without ``packing``, else at most ``max_length`` tokens of one document
    (fd.json records the most blocks a document was cut into: a group of that size).
    fd.json records the guarantee under ``privacy``; a model that carries one composes with
    it."""
    from ..dp import dp_settings, prior_history
    from ..training import fit_lm

    config = stage_config(task="causal-lm", data=data, model=model, tokenizer=tokenizer,
                     client_id=client_id, text_column=text_column, split=split,
                     max_length=max_length, packing=packing, epochs=epochs,
                     learning_rate=learning_rate, batch_size=batch_size,
                     val_fraction=val_fraction, seed=seed)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    check_free(Path(out), overwrite)
    check_pair(teacher, proxy)
    consensus = None
    if teacher is not None:
        check_round(digest_weight, schedule)
        consensus, temperature = open_token_teacher(teacher, out, "causal-lm", temperature,
                                                    1 - digest_weight, overwrite, limits,
                                                    trusted_keys, warn=False)
        config |= stage_config(teacher=teacher, proxy=proxy, digest_weight=digest_weight,
                               schedule=schedule, temperature=temperature)
    tuning = Tuning.of(model, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_type,
                        quantize, merge, gradient_checkpointing)
    dp = dp_settings(dp_epsilon, dp_delta, max_grad_norm, teacher, tuning)
    lm = tuning.load(load_lm, model, "causal-lm", tokenizer=tokenizer, seed=seed)
    tb = _blocks(data, split, lm, text_column, max_length, packing, model,
                 prompt_column=prompt_column, response_column=response_column,
                 per_document=dp is not None)
    config |= {"max_length": tb.max_length, **rows_config(tb), **tuning.record()}
    if dp is not None:
        config |= {"dp_epsilon": dp_epsilon, "dp_delta": dp_delta,
                   "max_grad_norm": max_grad_norm}
    digest = None
    if consensus is not None:  # the consensus's own blocks: its length, columns and packing
        check_vocab(lm, consensus.manifest, model, teacher)
        ptb = _teacher_blocks(proxy, teacher, consensus.manifest, lm, model, None, None, None,
                              None)
        digest = token_digest(consensus, ptb.blocks, temperature)
    order = list(range(len(tb.blocks)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    val, train = [tb.blocks[i] for i in order[:n_val]], [tb.blocks[i] for i in order[n_val:]]
    if not train:
        raise DataError(f"{data}: no blocks left to train on after holding out {n_val}")
    with atomic_dir(out, overwrite, sign_key) as tmp:
        common = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                      seed=seed, progress=progress, dtype=dtype,
                      gradient_checkpointing=tuning.gradient_checkpointing)
        guarantee = None
        if dp is not None:
            from ..dp import private_lm_fit

            metrics, guarantee = private_lm_fit(
                lm, train, tb, dp, prior_history(lm.meta), epochs=epochs,
                learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                progress=progress)
        elif digest is None:
            metrics = fit_lm(lm, train, **common)
        else:
            metrics = digest_and_revisit(lambda v, _, **kw: fit_lm(lm, v, **common, **kw),
                                         train, None, *digest, schedule, digest_weight)
        if val:
            metrics["val_perplexity"] = token_metrics(lm, val, batch_size)["perplexity"]
        meta = {"fd_version": __version__, "stage": "train-specialist",
                "client_id": specialist_client_id(client_id, lm.meta, out),
                "task": "causal-lm",
                "architecture": lm.architecture, "vocab_size": lm.vocab_size,
                "vocab_fingerprint": vocab_fingerprint(lm.tokenizer),
                "train_examples": len(train),
                "train_tokens": sum(row_count(b) for b in train),
                "val_examples": len(val), "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(lm.model)}
        if consensus is not None:
            meta |= round_meta(consensus_record(consensus, teacher), len(digest[0]))
        if guarantee is not None:
            meta["privacy"] = guarantee
        save_lm(lm, tmp, meta, merge=tuning.merge)
    return meta


def token_digest(reader, values: list, temperature: float, sequences: list | None = None,
                 rows: str = "token rows", item: str = "block", missing: str = "no block"):
    """The proxy examples a token consensus covers, for a later round's specialist:
    ``(their values, their example ids, TeacherRows)``, the bundle's rows checked against
    ``sequences`` (default ``values``: the proxy's blocks; a seq2seq proxy's targets)."""
    from ..bundle import TeacherRows

    block = reader.read_all()
    check_rows(block, values if sequences is None else sequences, reader.path, rows, item,
               missing)
    ids = block.example_ids.tolist()
    return [values[e] for e in ids], ids, TeacherRows(block, temperature)


def token_codec(encoding: str | None = None, k: int | None = None, value_dtype: str = "int8",
                draws: int | None = None, sample_temperature: float = 1.0):
    """The codec of a token bundle. ``encoding`` None is ``sample`` when ``draws`` is given,
    else ``topk``; ``k`` (default 16) is topk's and ``draws`` (default :data:`LM_DRAWS`)
    sample's, and either given for another encoding is refused."""
    encoding = encoding or ("sample" if draws is not None else LM_ENCODING)
    if encoding not in TOKEN_ENCODINGS:
        raise ValueError(f"encoding must be one of {TOKEN_ENCODINGS}, got {encoding!r}")
    if (k is not None and encoding != "topk") or (draws is not None and encoding != "sample"):
        raise ValueError(f"--{'k' if k is not None else 'draws'} does not apply to "
                         f"--encoding {encoding}; --k is for topk, --draws for sample")
    if encoding == "topk":
        return TopKCodec(k=16 if k is None else k, value_dtype=value_dtype)
    if encoding == "sample":
        return SampleCodec(draws=LM_DRAWS if draws is None else draws,
                           temperature=sample_temperature)
    return DenseCodec()


def emit_token_logits(model: str | Path, proxy: str | Path, out: str | Path, *,
                      encoding: str | None = None, k: int | None = None,
                      value_dtype: str = "int8", draws: int | None = None,
                      sample_temperature: float = 1.0,
                      tokenizer: str | Path | None = None, client_id: str | None = None,
                      text_column: str | None = None, split: str | None = None,
                      prompt_column: str | None = None, response_column: str | None = None,
                      max_length: int | None = None, packing: bool = True,
                      batch_size: int = 8, seed: int = 0, overwrite: bool = False,
                      progress: bool = True, sign_key=None, dtype: str = "auto",
                      resume: bool = False, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """Write a token bundle: the model's next-token distribution at every position of every
    proxy block, streamed into shards (memory does not grow with the proxy size).
    ``topk`` (the default) keeps the ``k`` (16) most likely ids per token and their tail mass;
    ``sample`` (the default when ``draws`` is given) draws ``draws`` (8) ids per token from
    the model at ``sample_temperature`` (distill must then use that temperature), an unbiased
    estimate. ``dtype`` (``auto``: bf16 on a GPU
    that has it, else fp32) is the model's; logits are encoded in fp32.

    Under ``torchrun`` / ``accelerate launch`` with N processes, each takes a contiguous share
    of the batches and writes a part (:func:`~fdcli.bundle.merge.part_path`); when every part
    is visible to process 0 (a shared filesystem) it merges them into ``out`` and removes them,
    else ``fd merge`` joins them. The rows are those of a one-process emit, byte for byte, at
    the same batch size. ``resume`` continues a killed or interrupted emit of ``out`` with
    the same settings from its last complete shard."""
    codec = token_codec(encoding, k, value_dtype, draws, sample_temperature)
    r = ranks()
    check_free(Path(out), overwrite)
    lm = load_lm(model, tokenizer=tokenizer)
    tb = _blocks(proxy, split, lm, text_column, max_length, packing, model,
                 prompt_column=prompt_column, response_column=response_column)
    # the weights as stored, before any change of dtype
    model_fp = lm.fingerprint()
    privacy = lm.meta.get("privacy")  # a DP model's counts are outside its guarantee
    config = stage_config(task="causal-lm", model=model, proxy=proxy, encoding=codec.name,
                     **codec.params(), dtype=place(lm.model, dtype), batch_size=batch_size,
                     split=split, **rows_config(tb), prompt_column=prompt_column,
                     response_column=response_column, max_length=tb.max_length,
                     packing=packing,
                     train_examples=None if privacy else lm.meta.get("train_examples"),
                     train_tokens=None if privacy else lm.meta.get("train_tokens"),
                     **round_config(lm.meta), **({"privacy": privacy} if privacy else {}))
    target = part_target(out, r, config)
    mine = batch_share(len(tb.blocks), batch_size, r)
    with BundleWriter(target, codec=codec, task="token", num_classes=lm.vocab_size,
                      label_fingerprint=vocab_fingerprint(lm.tokenizer),
                      proxy_fingerprint=tb.fingerprint,
                      client_id=emitted_client_id(client_id, lm.meta, model, model_fp),
                      model_fingerprint=model_fp, config=config, seed=seed,
                      overwrite=overwrite, sign_key=sign_key, resume=resume) as writer, \
            progress_bar(sum(row_count(b) for b in tb.blocks[mine.start:mine.stop]),
                         "emitting token logits", progress and r.main) as advance:
        begin = resume_start(writer, mine.start, advance, lambda stop: sum(
            row_count(b) for b in tb.blocks[mine.start:stop]))
        write_token_rows(lm, tb.blocks, writer, batch_size, span=range(begin, mine.stop),
                         advance=advance)
    return finish_parts(out, r, writer.manifest, overwrite, limits, sign_key)


def write_token_rows(lm, blocks, writer: BundleWriter, batch_size: int = 8, *,
                     span: range | None = None, advance=None) -> None:
    """Run the model over ``blocks[span]`` (all of them by default), in batches that start
    at ``span.start``, and add every position's logits to ``writer``. The writer encodes on
    the model's device and finishes a batch while the next one is computed."""
    span = span if span is not None else range(len(blocks))
    for index, logits, counts, _ in iter_token_logits(lm, blocks[span.start:span.stop],
                                                      batch_size):
        writer.add(range(span.start + index.start, span.start + index.stop), logits,
                   row_counts=counts)
        if advance is not None:
            advance(int(counts.sum()))


def open_token_teacher(teacher, out, task: str, temperature: float | None,
                       hard_weight: float, overwrite: bool, limits: Limits,
                       trusted_keys: dict | None, warn: bool = True):
    """Open a token bundle for a ``task`` (causal-lm or seq2seq) student: checked as
    :func:`~fdcli.stages.distill.open_teacher` does, refused when emitted for the other task,
    warned about when top-k and flat (with ``warn``: a student's teacher, not a later
    round's consensus). Returns the reader and the temperature (``None``: the one
    :func:`default_temperature` picks)."""
    student = "a causal-LM" if task == "causal-lm" else f"a {task}"
    reader = open_teacher(teacher, out, task="token",
                          temperature=1.0 if temperature is None else temperature,
                          hard_weight=hard_weight, overwrite=overwrite, limits=limits,
                          trusted_keys=trusted_keys,
                          hint=f"{student} student needs a token bundle (fd emit-logits "
                               f"--task {task})")
    check_emit_task(reader.manifest, teacher, task)
    if temperature is None:
        temperature = default_temperature(reader.manifest)
    if warn:
        warn_weak_teacher(reader.manifest, teacher, hard_weight)
    return reader, temperature


def check_emit_task(manifest: BundleManifest, teacher, task: str) -> None:
    """Refuse a token bundle emitted for the other token task (``causal-lm`` or ``seq2seq``;
    bundles that record none are taken as they come)."""
    made = manifest.producer.config.get("task")
    if made is not None and made != task:
        raise IncompatibleBundlesError(
            f"{teacher}: a {made!r} token bundle; a {task} student needs one from fd "
            f"emit-logits --task {task}")


def check_vocab(lm, manifest: BundleManifest, student, teacher) -> None:
    fp = vocab_fingerprint(lm.tokenizer)
    if fp != manifest.label_fingerprint or lm.vocab_size != manifest.num_classes:
        raise IncompatibleBundlesError(
            f"{student}: its tokenizer ({lm.vocab_size} ids, vocabulary {fp}) differs from the "
            f"one {teacher} was made with ({manifest.num_classes} ids, vocabulary "
            f"{manifest.label_fingerprint}); token-level distillation needs the same tokenizer "
            "(pass --tokenizer with the federation's tokenizer folder)")


def _teacher_blocks(proxy, teacher, manifest: BundleManifest, lm, model, split, text_column,
                    max_length, packing) -> TextBlocks:
    cfg = manifest.producer.config
    max_length = max_length or cfg.get("max_length")
    packing = cfg.get("packing", True) if packing is None else packing
    if cfg.get("rows") == "response tokens":  # instruction examples: the bundle's columns
        tb = _blocks(proxy, split, lm, None, max_length, packing, model,
                     prompt_column=cfg.get("prompt_column"),
                     response_column=cfg.get("response_column"))
    else:
        tb = _blocks(proxy, split, lm, text_column or cfg.get("text_column"), max_length,
                     packing, model)
    if tb.fingerprint != manifest.proxy_fingerprint:
        raise DataError(f"{proxy}: these token blocks ({tb.describe()}) differ from the ones "
                        f"{teacher} was made on (fingerprint {tb.fingerprint}, the bundle says "
                        f"{manifest.proxy_fingerprint}); use the same proxy file, tokenizer, "
                        "columns, --max-length and packing")
    return tb


def check_rows(block, sequences: list, teacher, rows: str = "token rows",
               item: str = "block", missing: str = "no block") -> None:
    """Refuse a token bundle whose example ``e`` has another number of rows than
    ``sequences[e]`` has (the proxy's blocks: :func:`~fdcli.lm.row_count`; its pairs'
    targets: their tokens)."""
    lengths = (block.row_offsets[1:] - block.row_offsets[:-1]).tolist()
    for e, n in zip(block.example_ids.tolist(), lengths):
        found = row_count(sequences[e]) if e < len(sequences) else missing
        if found != n:
            raise DataError(f"{teacher}: example {e} has {n} {rows}, the proxy {item} has "
                            f"{found}; the bundle does not belong to this proxy set")


def _topk_tail(manifest: BundleManifest) -> float | None:
    """The mean tail mass a top-k token bundle records, or None (another encoding, or none
    recorded)."""
    tail = manifest.fidelity.get("mean_tail_mass")
    if manifest.encoding.get("name") != "topk" or not isinstance(tail, (int, float)):
        return None
    return float(tail)


def default_temperature(manifest: BundleManifest) -> float:
    """The distillation temperature for a token bundle when none is given: a sample bundle's
    draw temperature (it can be read at no other); 2 for a top-k teacher whose kept ids hold
    under a quarter of its mass (``mean_tail_mass`` above :data:`FLAT_TEACHER_TAIL_MASS`);
    else 1. Measured: T = 1 beat T = 2 by 15% with teachers of tail mass 0.58 and 0.68, and
    lost by 8-9% with teachers of 0.84 and 0.86 (docs/token-distillation.md)."""
    if manifest.encoding.get("name") == "sample":
        return float(manifest.encoding.get("temperature", 1.0))
    tail = _topk_tail(manifest)
    return 2.0 if tail is not None and tail > FLAT_TEACHER_TAIL_MASS else 1.0


def warn_weak_teacher(manifest: BundleManifest, teacher, hard_weight: float) -> None:
    """Warn when a top-k token bundle keeps less than half of the teacher's probability in its
    ids: the tail-bucket loss then fixes only how much mass the student puts outside them."""
    tail = _topk_tail(manifest)
    if tail is None or not tail > WEAK_TEACHER_TAIL_MASS:
        return
    head = (f"{teacher}: its {manifest.encoding.get('k')} ids per token hold "
            f"{1 - tail:.0%} of the teacher's probability (mean tail mass {tail:.2f}, above "
            f"{WEAK_TEACHER_TAIL_MASS}), so top-k KD says little about the rest of the "
            "vocabulary")
    if hard_weight == 0:
        advice = ("with no cross-entropy on the proxy text, such students measured 1.5-2.1 "
                  "times the perplexity of training on the proxy text alone; use --hard-weight "
                  f"{LM_HARD_WEIGHT} (the default)")
    else:
        advice = (f"the proxy text's next tokens (--hard-weight {hard_weight}) supply the rest; "
                  "in fd's measurements a larger --k did not help, while 8 sampled ids per "
                  "token (fd emit-logits --draws 8) did with four clients or a strong teacher, "
                  "and did not with two weak ones "
                  "(docs/token-distillation.md)")
    warnings.warn(f"{head}; {advice}", FdWarning, stacklevel=3)


def distill_lm(student: str | Path, proxy: str | Path, teacher: str | Path, out: str | Path,
               *, tokenizer: str | Path | None = None, temperature: float | None = None,
               hard_weight: float = LM_HARD_WEIGHT, epochs: float = 3.0,
               learning_rate: float = 5e-5, batch_size: int = 8,
               text_column: str | None = None, split: str | None = None,
               max_length: int | None = None, packing: bool | None = None, seed: int = 0,
               overwrite: bool = False, sign_key=None, progress: bool = True,
               limits: Limits = DEFAULT_LIMITS, trusted_keys: dict | None = None,
               dtype: str = "auto", lora_rank: int | None = None, lora_alpha: float | None = None,
               lora_dropout: float | None = None, lora_targets: str | None = None,
               lora_type: str | None = None, quantize: str | None = None,
               merge: bool = False, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """Distill a causal-LM student (any architecture sharing the teachers' tokenizer) on the
    proxy text against a token bundle. The loss is KL at ``temperature`` times T^2: the
    tail-bucket loss for topk teachers, the sampled-target loss for sample teachers, full KL for
    dense ones; ``hard_weight`` mixes in next-token cross-entropy on the proxy text (the text
    is always labelled for an LM). ``temperature`` None picks one from the teacher
    (:func:`default_temperature`). The teacher stays in the bundle's compact tensors;
    rows are decoded a batch at a time. Warns (:class:`~fdcli.errors.FdWarning`) when a top-k
    teacher keeps less than half of its probability mass in its ids."""
    from ..bundle import TeacherRows
    from ..training import fit_lm

    tuning = Tuning.of(student, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_type,
                        quantize, merge, gradient_checkpointing)
    reader, temperature = open_token_teacher(teacher, out, "causal-lm", temperature,
                                             hard_weight, overwrite, limits, trusted_keys)
    m = reader.manifest
    lm = tuning.load(load_lm, student, "causal-lm", tokenizer=tokenizer, seed=seed)
    check_vocab(lm, m, student, teacher)
    tb = _teacher_blocks(proxy, teacher, m, lm, student, split, text_column, max_length,
                         packing)
    block = reader.read_all()
    check_rows(block, tb.blocks, teacher)
    teacher_rows = TeacherRows(block, temperature)
    ids = block.example_ids.tolist()
    config = stage_config(task="causal-lm", student=student, proxy=proxy, teacher=teacher,
                     tokenizer=tokenizer, temperature=temperature, hard_weight=hard_weight,
                     epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                     max_length=tb.max_length, packing=tb.packing, seed=seed,
                     rows=rows_config(tb)["rows"],
                     **tuning.record())
    with atomic_dir(out, overwrite, sign_key) as tmp:
        metrics = fit_lm(lm, [tb.blocks[e] for e in ids], epochs=epochs,
                         learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                         teacher=teacher_rows, example_ids=ids, hard_weight=hard_weight,
                         progress=progress, dtype=dtype,
                         gradient_checkpointing=tuning.gradient_checkpointing)
        meta = {"fd_version": __version__, "stage": "distill", "client_id": "student",
                "task": "causal-lm", "architecture": lm.architecture,
                "vocab_size": lm.vocab_size, "vocab_fingerprint": m.label_fingerprint,
                "proxy_examples": len(ids), "proxy_tokens": block.rows,
                "teacher_manifest": m.to_dict() | {"shards": len(m.shards)},
                "metrics": metrics, "config": config,
                "model_fingerprint": fingerprint_model(lm.model)}
        save_lm(lm, tmp, meta, merge=tuning.merge)
    return meta


def evaluate_lm(model: str | Path, data: str | Path, *, tokenizer: str | Path | None = None,
                text_column: str | None = None, split: str | None = None,
                prompt_column: str | None = None, response_column: str | None = None,
                max_length: int | None = None, packing: bool = True,
                batch_size: int = 8, teacher: str | Path | None = None,
                proxy: str | Path | None = None, dtype: str = "auto") -> dict[str, Any]:
    """Perplexity and next-token accuracy of a causal LM on held-out text; with ``teacher``
    (a token bundle) and ``proxy`` (the text it was made on), also the model's agreement with
    that teacher. ``dtype`` is the model's (``auto``: bf16 on a GPU that has it)."""
    if (teacher is None) != (proxy is None):
        raise ValueError("teacher agreement needs both a teacher bundle and its proxy data")
    lm = load_lm(model, tokenizer=tokenizer)
    place(lm.model, dtype)
    tb = _blocks(data, split, lm, text_column, max_length, packing, model,
                 prompt_column=prompt_column, response_column=response_column)
    result: dict[str, Any] = {"model": str(model), "architecture": lm.architecture,
                              **rows_config(tb),
                              **token_metrics(lm, tb.blocks, batch_size)}
    if teacher is not None:
        reader = read_bundle(teacher)
        if reader.manifest.task != "token":
            raise IncompatibleBundlesError(f"{teacher}: task {reader.manifest.task!r}; "
                                           "expected a token bundle")
        check_vocab(lm, reader.manifest, model, teacher)
        ptb = _teacher_blocks(proxy, teacher, reader.manifest, lm, model, split, None, None,
                              None)
        result["teacher_agreement"] = teacher_agreement(lm, ptb, reader, batch_size)
    return result
