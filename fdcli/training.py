"""Fine-tuning through the `transformers` Trainer: cross-entropy for specialists, and the
distillation losses of :mod:`fdcli.losses` for students. Devices and precision are left to
the Trainer (accelerate underneath), so the same call runs on CPU or GPU."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from .losses import dense_kd_loss, sparse_kd_loss
from .models import DEFAULT_MAX_LENGTH, Classifier, batch_inputs


class _Rows(torch.utils.data.Dataset):
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


@dataclass
class SoftTargets:
    """Teacher distributions at temperature T, one row per training example: either dense
    log-probs ``[N, C]`` or sparse ``ids``/``logp`` ``[N, K]`` with ``tail`` ``[N]``."""

    temperature: float
    dense: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    logp: torch.Tensor | None = None
    tail: torch.Tensor | None = None


class _Collator:
    def __init__(self, clf: Classifier, max_length: int, soft: SoftTargets | None):
        self.clf, self.max_length, self.soft = clf, max_length, soft

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = batch_inputs(self.clf, [r["value"] for r in rows], self.max_length)
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([r["label"] for r in rows])
        if self.soft is not None:
            batch["fd_rows"] = torch.tensor([r["target"] for r in rows])
        return batch


def _trainer_class():
    from transformers import Trainer

    class FdTrainer(Trainer):
        """Cross-entropy, or (1 - hard_weight) * KD + hard_weight * CE when soft targets are
        given."""

        fd_soft: SoftTargets | None = None
        fd_hard_weight: float = 0.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rows = inputs.pop("fd_rows", None)
            labels = inputs.pop("labels", None)
            outputs = model(**inputs)
            logits = outputs.logits
            soft = self.fd_soft
            loss = None
            if soft is not None:
                rows = rows.cpu()
                t = soft.temperature
                if soft.dense is not None:
                    kd = dense_kd_loss(logits, soft.dense[rows].to(logits.device), t)
                else:
                    kd = sparse_kd_loss(logits, soft.ids[rows].to(logits.device),
                                        soft.logp[rows].to(logits.device),
                                        soft.tail[rows].to(logits.device), t)
                loss = kd
                if labels is not None and self.fd_hard_weight > 0:
                    ce = torch.nn.functional.cross_entropy(logits.float(), labels)
                    loss = (1 - self.fd_hard_weight) * kd + self.fd_hard_weight * ce
            else:
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            return (loss, outputs) if return_outputs else loss

    return FdTrainer


def fit(clf: Classifier, values: list[Any], labels: list[int] | None, *, epochs: float,
        learning_rate: float, batch_size: int, seed: int,
        soft: SoftTargets | None = None, hard_weight: float = 0.0,
        max_length: int = DEFAULT_MAX_LENGTH, progress: bool = True) -> dict[str, float]:
    """Train ``clf.model`` in place; returns the Trainer's training metrics."""
    from transformers import TrainingArguments

    targets = list(range(len(values))) if soft is not None else None
    dataset = _Rows(values, labels, targets)
    with tempfile.TemporaryDirectory(prefix="fd-trainer-") as work:
        args = TrainingArguments(
            output_dir=work, num_train_epochs=epochs, learning_rate=learning_rate,
            per_device_train_batch_size=batch_size, seed=seed, data_seed=seed,
            report_to=[], save_strategy="no", logging_strategy="no",
            remove_unused_columns=False, dataloader_num_workers=0,
            disable_tqdm=not progress, use_cpu=not torch.cuda.is_available())
        trainer = _trainer_class()(model=clf.model, args=args, train_dataset=dataset,
                                   data_collator=_Collator(clf, max_length, soft))
        trainer.fd_soft, trainer.fd_hard_weight = soft, hard_weight
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # results go to stdout only from fd itself
        result = trainer.train()
    clf.model.eval()
    return {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
