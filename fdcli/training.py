"""Fine-tuning through the `transformers` Trainer: cross-entropy for specialists, and the
distillation losses of :mod:`fdcli.losses` for students. Devices and precision are left to
the Trainer (accelerate underneath), so the same call runs on CPU or GPU."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from .devices import trainer_precision
from .launch import ranks
from .lm import LanguageModel, pad_blocks
from .losses import dense_kd_loss, sparse_kd_loss
from .models import DEFAULT_MAX_LENGTH, Classifier, batch_inputs

if TYPE_CHECKING:  # the trainer takes any object with TeacherRows' batch(); no bundle code
    from .bundle import TeacherRows


class _Rows(torch.utils.data.Dataset):
    """Examples as dicts: ``value`` (raw input, or a block of token ids), and where they apply
    ``label`` and ``target`` (the example's id in the teacher bundle)."""

    def __init__(self, values: list[Any], labels: list[int] | None, targets: list[int] | None):
        self.values, self.labels, self.targets = values, labels, targets

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = {"value": self.values[i]}
        if self.labels is not None:
            row["label"] = self.labels[i]
        if self.targets is not None:
            row["target"] = self.targets[i]
        return row


class _Collator:
    """Model inputs for a batch; ``lm`` batches are blocks of token ids whose every position
    is a row (``next_ids`` holds the token each one predicts)."""

    def __init__(self, model_inputs, teacher: TeacherRows | None):
        self.model_inputs, self.teacher = model_inputs, teacher

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.model_inputs([r["value"] for r in rows])
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([r["label"] for r in rows])
        if self.teacher is not None:
            targets = [r["target"] for r in rows]
            soft = [t is not None for t in targets]
            if any(soft):
                batch.update(self.teacher.batch([t for t in targets if t is not None]))
            if not all(soft):  # a mixed batch: teacher rows only for the proxy examples
                batch["fd_soft"] = torch.tensor(soft)
        return batch


def _trainer_class():
    from transformers import Trainer

    class FdTrainer(Trainer):
        """Cross-entropy, or (1 - hard_weight) * KD + hard_weight * CE when a teacher is given.
        For causal LMs every real position is a row (an instruction example's response-
        predicting positions only: ``row_mask``): the CE target is the next token. In a
        mixed batch (``fd_soft``, one flag per example) KD is over the rows that have teacher
        targets and CE over the rows that have labels (-100 elsewhere; for token rows, the
        rows of examples without a teacher target); a batch with only one kind uses that
        term alone."""

        fd_temperature: float = 1.0
        fd_hard_weight: float = 0.0
        fd_vocab: int | None = None  # causal LM: logits are cut to the tokenizer's size
        fd_proximal: tuple[float, list] | None = None  # FedProx: mu and the global weights

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            teacher = {k: inputs.pop(k) for k in list(inputs) if k.startswith("fd_")}
            labels = inputs.pop("labels", None)
            next_ids = inputs.pop("next_ids", None)
            rows = inputs.pop("row_mask", None)  # a causal LM's rows (a prompt's are not)
            outputs = model(**inputs)
            logits = outputs.logits
            soft = teacher.pop("fd_soft", None)
            if next_ids is not None:  # token rows: the decoder's positions, or the LM's
                mask = rows if rows is not None else \
                    inputs.get("decoder_attention_mask", inputs["attention_mask"]).bool()
                logits, labels = logits[..., :self.fd_vocab][mask], next_ids[mask]
                if soft is not None:  # a mixed batch: the proxy examples' rows learn the
                    soft = soft[:, None].expand(mask.shape)[mask]  # consensus, not the text
                    labels = labels.masked_fill(soft, -100)
            ce = None
            if labels is not None and bool((labels != -100).any()):
                ce = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100)
            if soft is not None:
                logits = logits[soft]
            if not teacher:
                loss = ce
            else:
                t = self.fd_temperature
                if "fd_dense" in teacher:
                    loss = dense_kd_loss(logits, teacher["fd_dense"], t)
                else:
                    loss = sparse_kd_loss(logits, teacher["fd_ids"], teacher["fd_logp"],
                                          teacher["fd_tail"], t)
                if ce is not None and self.fd_hard_weight > 0:
                    loss = (1 - self.fd_hard_weight) * loss + self.fd_hard_weight * ce
            if loss is None:  # no row of the batch has a target (never for fd's own data)
                loss = logits.sum() * 0.0
            if self.fd_proximal is not None:  # FedProx: (mu / 2) ||w - w_global||^2
                mu, anchor = self.fd_proximal
                loss = loss + mu / 2 * sum((p - a).pow(2).sum() for p, a in
                                           zip(model.parameters(), anchor))
            return (loss, outputs) if return_outputs else loss

    return FdTrainer


def _checkpointing() -> dict[str, Any]:
    """TrainingArguments that turn on gradient checkpointing (non-reentrant, which works with
    frozen base weights), under the name this transformers uses."""
    import inspect

    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in \
        inspect.signature(TrainingArguments).parameters else "gradient_checkpointing"
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def _train(model, dataset, collator, *, epochs: float, learning_rate: float, batch_size: int,
           seed: int, teacher: TeacherRows | None, hard_weight: float, vocab: int | None,
           progress: bool, dtype: str = "auto", callbacks: tuple = (),
           gradient_checkpointing: bool = False, proximal_mu: float = 0.0
           ) -> dict[str, float]:
    from contextlib import ExitStack

    from transformers import TrainingArguments
    from transformers.trainer_callback import (PrinterCallback, ProgressCallback,
                                               TrainerCallback)

    from .progress import progress_bar

    class FdBar(TrainerCallback):
        """fd's own progress display for the training steps (stderr), in place of the
        Trainer's tqdm bar and of the metrics dict it prints to stdout (which would break
        ``--json`` output)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.stack = ExitStack()
            self.advance = self.stack.enter_context(progress_bar(state.max_steps,
                                                                 "training", True))

        def on_step_end(self, args, state, control, **kwargs):
            self.advance(1)

        def on_train_end(self, args, state, control, **kwargs):
            self.stack.close()

    with tempfile.TemporaryDirectory(prefix="fd-trainer-") as work:
        args = TrainingArguments(
            output_dir=work, num_train_epochs=epochs, learning_rate=learning_rate,
            per_device_train_batch_size=batch_size, seed=seed, data_seed=seed,
            report_to=[], save_strategy="no", logging_strategy="no",
            remove_unused_columns=False, dataloader_num_workers=0,
            disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
            **(_checkpointing() if gradient_checkpointing else {}),
            **trainer_precision(dtype))
        trainer = _trainer_class()(model=model, args=args, train_dataset=dataset,
                                   data_collator=collator)
        trainer.fd_temperature = teacher.temperature if teacher is not None else 1.0
        trainer.fd_hard_weight, trainer.fd_vocab = hard_weight, vocab
        if proximal_mu > 0:
            trainer.fd_proximal = (proximal_mu, [p.detach().clone() for p in
                                                 model.parameters()])
        trainer.remove_callback(PrinterCallback)  # results go to stdout only from fd itself
        trainer.remove_callback(ProgressCallback)
        if progress and ranks().main:
            trainer.add_callback(FdBar)
        for callback in callbacks:
            trainer.add_callback(callback)
        result = trainer.train()
    model.eval()
    return {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}


def fit_lm(lm: LanguageModel, blocks: list[list[int]], *, epochs: float, learning_rate: float,
           batch_size: int, seed: int, teacher: TeacherRows | None = None,
           example_ids: list[int] | None = None, hard_weight: float = 0.0,
           progress: bool = True, dtype: str = "auto",
           gradient_checkpointing: bool = False) -> dict[str, float]:
    """Train a causal LM in place on token blocks: next-token cross-entropy, or KD against
    ``teacher`` (whose rows for ``example_ids[i]`` belong to ``blocks[i]``) mixed with
    ``hard_weight`` of cross-entropy. ``dtype`` sets mixed precision (the weights stay
    fp32); ``gradient_checkpointing`` trades compute for activation memory."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    def model_inputs(values):
        return pad_blocks(values, pad)

    targets = example_ids if teacher is not None else None
    return _train(lm.model, _Rows(blocks, None, targets), _Collator(model_inputs, teacher),
                  epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                  teacher=teacher, hard_weight=hard_weight, vocab=lm.vocab_size,
                  progress=progress, dtype=dtype, gradient_checkpointing=gradient_checkpointing)


def fit_seq2seq(m: LanguageModel, sources: list[list[int]], target_ids: list[list[int]], *,
                epochs: float, learning_rate: float, batch_size: int, seed: int,
                teacher: TeacherRows | None = None, example_ids: list[int] | None = None,
                hard_weight: float = 0.0, progress: bool = True, dtype: str = "auto",
                gradient_checkpointing: bool = False) -> dict[str, float]:
    """Train an encoder-decoder model in place on source/target pairs: cross-entropy on every
    target token (teacher-forced), or KD against ``teacher`` (whose rows for
    ``example_ids[i]`` are pair i's target tokens) mixed with ``hard_weight`` of
    cross-entropy."""
    from .seq2seq import pad_id, pad_pairs, start_id

    pad, start = pad_id(m), start_id(m)

    def model_inputs(values):
        return pad_pairs([v[0] for v in values], [v[1] for v in values], pad, start)

    targets = example_ids if teacher is not None else None
    return _train(m.model, _Rows(list(zip(sources, target_ids)), None, targets),
                  _Collator(model_inputs, teacher), epochs=epochs,
                  learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                  teacher=teacher, hard_weight=hard_weight, vocab=m.vocab_size,
                  progress=progress, dtype=dtype, gradient_checkpointing=gradient_checkpointing)


def fit(clf: Classifier, values: list[Any], labels: list[int] | None, *, epochs: float,
        learning_rate: float, batch_size: int, seed: int, teacher: TeacherRows | None = None,
        example_ids: list[int] | None = None, hard_weight: float = 0.0,
        max_length: int = DEFAULT_MAX_LENGTH, progress: bool = True,
        dtype: str = "auto", gradient_checkpointing: bool = False,
        proximal_mu: float = 0.0) -> dict[str, float]:
    """Train ``clf.model`` in place; returns the Trainer's training metrics. With a
    ``teacher``, ``example_ids[i]`` names the teacher row of ``values[i]``. ``dtype`` sets
    mixed precision (the weights stay fp32). ``proximal_mu`` > 0 adds FedProx's
    ``mu / 2 * ||w - w0||^2`` toward the weights training started from."""
    def model_inputs(batch_values):
        return batch_inputs(clf, batch_values, max_length)

    targets = example_ids if teacher is not None else None
    return _train(clf.model, _Rows(values, labels, targets), _Collator(model_inputs, teacher),
                  epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                  teacher=teacher, hard_weight=hard_weight, vocab=None, progress=progress,
                  dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                  proximal_mu=proximal_mu)


def fit_relational(student, values: list[Any], anchor_pos: list[int], *, epochs: float,
                   learning_rate: float, batch_size: int, seed: int, teacher: TeacherRows,
                   example_ids: list[int], max_length: int = DEFAULT_MAX_LENGTH,
                   progress: bool = True, dtype: str = "auto") -> dict[str, float]:
    """Train a :class:`~fdcli.relational.RelationalStudent` in place on proxy ``values``
    against ``teacher``'s anchor distributions (``example_ids[i]`` names the teacher row of
    ``values[i]``; ``anchor_pos[i]`` is its position among the anchors, or -1), refreshing
    its anchor bank as it goes."""
    from .relational import bank_callback

    def model_inputs(batch_values):
        batch = batch_inputs(student.fd_enc, [v for v, _ in batch_values], max_length)
        batch["anchor_pos"] = torch.tensor([a for _, a in batch_values])
        return batch

    return _train(student, _Rows(list(zip(values, anchor_pos)), None, example_ids),
                  _Collator(model_inputs, teacher), epochs=epochs, learning_rate=learning_rate,
                  batch_size=batch_size, seed=seed, teacher=teacher, hard_weight=0.0,
                  vocab=None, progress=progress, dtype=dtype, callbacks=(bank_callback(student),))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
