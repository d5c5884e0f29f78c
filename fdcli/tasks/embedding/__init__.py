"""Embeddings: any encoder's similarities to anchor proxy examples (relational bundles)."""

from __future__ import annotations

from ..base import Auto, Command, Task
from ..shared_options import AGGREGATION, EMITTING, READING, SIMULATION, SPARSE, TRAINING

INPUTS = {"text_column": None, "image_column": None, "tokenizer": None, "split": None}

TASK = Task(
    name="embedding",
    summary="any encoder's embeddings, as similarities to anchor proxy examples (no labels, "
            "any architecture)",
    bundle_task="embedding",
    any_model=True,
    tables="fdcli.tasks.embedding.tables:print_simulation",
    commands={
        "emit-logits": Command("fdcli.stages.embedding:emit_embedding_logits", {
            **EMITTING, **INPUTS, **SPARSE,
            "anchors": Auto("1024, or the whole proxy set if smaller"), "temperature": 0.1,
            "pooling": "mean", "encoding": "topk", "k": 64, "batch_size": 64}),
        "aggregate": Command("fdcli.stages.aggregate:aggregate", {
            **AGGREGATION, **SPARSE, "k": Auto("as many as the input that kept most")}),
        "distill": Command("fdcli.stages.embedding:distill_embedding", {
            **TRAINING, **READING, **INPUTS, "temperature": 1.0, "batch_size": 16,
            "bank": "epoch", "pooling": Auto("the bundle's")}),
        "evaluate": Command("fdcli.stages.embedding:evaluate_embedding", {
            **INPUTS, "label_column": None, "probe_train": None, "teacher": None,
            "pooling": Auto("what the model records, else mean"), "knn": 5, "neighbours": 10,
            "batch_size": 64, "dtype": "auto", "seed": 0}),
        "simulate": Command("fdcli.stages.simulate_embedding:simulate_embedding", {
            **SIMULATION, "data": None, "num_clients": 5, "alpha": 1.0, "proxy_fraction": 0.2,
            "architectures": Auto("vit,resnet; bert,distilbert for text"),
            "student": Auto("resnet; bert for text"), "epochs": 60.0, "distill_epochs": 100.0,
            "batch_size": 32, "anchors": 1024, "k": 64, "temperature": 0.1,
            "banks": ("epoch",), "rule": "confidence", "rounds": 1,
            "round_epochs": Auto("a fifth of --distill-epochs"),
            "round_distill_epochs": Auto("a fifth of --distill-epochs")}),
    },
)
