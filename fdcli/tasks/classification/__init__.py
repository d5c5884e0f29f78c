"""Classification: labelled text or images; bundles of per-example class log-probabilities."""

from __future__ import annotations

from ..base import Auto, Command, Task
from ..shared_options import (AGGREGATION, DP, EMITTING, LORA, READING, SIMULATION,
                              SPECIALIST, TRAINING)

COLUMNS = {"text_column": None, "image_column": None}
LABELLED = {**COLUMNS, "label_column": None}

TASK = Task(
    name="classification",
    summary="labelled text or images (sequence or image classification); the default",
    bundle_task="classification",
    architectures=("ForSequenceClassification", "ForImageClassification"),
    bases=("causal-lm",),
    tables="fdcli.tasks.classification.tables:print_simulation",
    commands={
        "train-specialist": Command("fdcli.stages.train_specialist:train_specialist", {
            **SPECIALIST, **LABELLED, **LORA, "labels": None, "batch_size": 16, "teacher": None,
            "proxy": None, "digest_weight": 0.2, "schedule": "mixed", "temperature": 2.0,
            "trusted_keys": None, **DP}),
        "emit-logits": Command("fdcli.stages.emit:emit_logits", {
            **EMITTING, **COLUMNS, "encoding": "dense", "k": 16, "value_dtype": "int8",
            "declare_label_counts": False, "proxy_slice": None, "split": None,
            "batch_size": 64}),
        "aggregate": Command("fdcli.stages.aggregate:aggregate", {
            **AGGREGATION, "sharpen": None, "dp_sigma": None, "dp_threshold": None,
            "dp_threshold_sigma": Auto("twice --dp-sigma"), "dp_delta": 1e-5}),
        "distill": Command("fdcli.stages.distill:distill", {
            **TRAINING, **READING, **LABELLED, **LORA, "temperature": 2.0, "hard_weight": 0.0,
            "batch_size": 16, "tokenizer": None, "split": None}),
        "evaluate": Command("fdcli.tasks.classification.commands:evaluate", {
            **LABELLED, "split": None, "batch_size": 64, "dtype": "auto", "mia": False,
            "members": None, "nonmembers": None, "references": (), "match_labels": False}),
        "simulate": Command("fdcli.stages.simulate:simulate", {
            **SIMULATION, "data": None, "num_clients": 5, "alpha": 1.0, "proxy_fraction": 0.2,
            "validation_fraction": 0.1, "coordinator_validation": False, "rule": "coverage",
            "compare_rules": (), "architectures": Auto("vit,resnet; bert,distilbert for text"),
            "student": Auto("resnet; bert for text"), "epochs": 60.0, "distill_epochs": 100.0,
            "batch_size": 32, "temperature": 2.0, "rounds": 2, "round_epochs": 5.0,
            "round_distill_epochs": 30.0, "digest_weight": 0.2, "schedule": "mixed",
            "from_student": False, "proxy_slices": 1, "sharpen": 0.1, "poison": 0.0,
            "poison_kind": "flip", "baselines": ("fedavg", "standalone", "centralized"),
            "fedavg_rounds": 20, "fedavg_local_epochs": 3.0, "fedavg_fraction": 1.0,
            "fedavg_tune_lrs": (), "fedavg_tune_epochs": (), "fedprox_mu": 0.01,
            "target_fraction": 0.95, "privacy": True, "dp_epsilons": (), "dp_delta": 1e-5,
            "max_grad_norm": 1.0, "seeds": 1}),
    },
)
