"""Causal language models: every token position is a row of a token bundle."""

from __future__ import annotations

from ..base import Auto, Command, Task
from ..shared_options import (AGGREGATION, DP, EMITTING, LORA, READING, ROUNDS, SIMULATION,
                              SPARSE, SPECIALIST, TOKEN_ENCODING, TRAINING)

MAX_LENGTH = Auto("the length fd trained the model with, else 128 or the model's positions "
                  "if fewer")
TEXT = {"tokenizer": None, "text_column": None, "split": None}
#: instruction examples: a prompt and a response column (else a messages column, if any)
CHAT = {"prompt_column": None, "response_column": None}

TASK = Task(
    name="causal-lm",
    summary="causal language models (AutoModelForCausalLM): a row per token position",
    bundle_task="token",
    architectures=("ForCausalLM", "LMHeadModel"),
    tables="fdcli.tasks.causal_lm.tables:print_simulation",
    commands={
        "train-specialist": Command("fdcli.stages.lm:train_lm_specialist", {
            **SPECIALIST, **TEXT, **CHAT, **LORA, **ROUNDS, **DP, "max_length": MAX_LENGTH,
            "packing": True, "batch_size": 16}),
        "emit-logits": Command("fdcli.stages.lm:emit_token_logits", {
            **EMITTING, **TOKEN_ENCODING, **TEXT, **CHAT, "max_length": MAX_LENGTH,
            "packing": True, "batch_size": 8}),
        "aggregate": Command("fdcli.stages.aggregate:aggregate", {
            **AGGREGATION, **SPARSE, "k": Auto("16")}),
        "distill": Command("fdcli.stages.lm:distill_lm", {
            **TRAINING, **READING, **TEXT, **LORA,
            "temperature": Auto("1, or 2 for a top-k teacher whose mean tail mass is above "
                                "0.75, or a sampled teacher's own"),
            "hard_weight": 0.5, "batch_size": 8,
            "max_length": Auto("the teacher bundle's")}),
        "evaluate": Command("fdcli.stages.lm:evaluate_lm", {
            **TEXT, **CHAT, "max_length": MAX_LENGTH, "packing": True, "batch_size": 8,
            "teacher": None, "proxy": None, "dtype": "auto"}),
        "simulate": Command("fdcli.stages.simulate_lm:simulate_lm", {
            **SIMULATION, "data": None, "text_column": None, "domain_column": None,
            "label_column": None, "alpha": 1.0, "proxy_fraction": 0.2, "split": None,
            "validation_fraction": 0.1,
            "num_clients": 4, "rule": "confidence", "compare_rules": ("mean",),
            "architectures": ("gpt2", "llama"), "student": "gpt2", "client_chars": 300_000,
            "proxy_chars": 600_000, "max_length": 64, "k": 16, "epochs": 2.0,
            "distill_epochs": 2.0, "batch_size": 16,
            "temperature": Auto("as fd distill picks"), "hard_weight": 0.5,
            "fedavg_rounds": 8, "fedavg_local_epochs": 0.5, "rounds": 3, "round_epochs": 1.0,
            "round_distill_epochs": 1.0, "digest_weight": 0.2, "poison": 0.0,
            "poison_kind": "random", "privacy": True, "dp_epsilons": (), "dp_delta": 1e-5,
            "max_grad_norm": 1.0, "seeds": 1}),
    },
)
