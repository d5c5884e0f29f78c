"""Encoder-decoder models: every target token, teacher-forced, is a row of a token bundle."""

from __future__ import annotations

from ..base import Auto, Command, Task
from ..shared_options import (AGGREGATION, EMITTING, LORA, READING, ROUNDS, SIMULATION,
                              SPARSE, SPECIALIST, TOKEN_ENCODING, TRAINING)

PAIRS = {"tokenizer": None, "source_column": None, "target_column": None, "split": None}
LENGTHS = {"max_source_length": Auto("the model's or bundle's, else 256"),
           "max_target_length": Auto("the model's or bundle's, else 64")}

#: why DP-SGD is not offered (measured with Opacus 1.6; docs/privacy.md)
NO_DP = ("DP-SGD is not built for encoder-decoders: T5's relative_attention_bias and BART's "
         "embed_positions take positions without a batch dimension, so Opacus computes no "
         "per-example gradient for them")

TASK = Task(
    name="seq2seq",
    summary="encoder-decoder models (AutoModelForSeq2SeqLM: T5, BART, Marian): a row per "
            "target token",
    bundle_task="token",
    architectures=("ForConditionalGeneration", "ForSeq2SeqLM", "MTModel", "EncoderDecoderModel"),
    tables="fdcli.tasks.seq2seq.tables:print_simulation",
    commands={
        "train-specialist": Command("fdcli.stages.seq2seq:train_seq2seq_specialist", {
            **SPECIALIST, **PAIRS, **LENGTHS, **LORA, **ROUNDS, "batch_size": 16},
            refused={"dp_epsilon": NO_DP, "dp_delta": NO_DP, "max_grad_norm": NO_DP}),
        "emit-logits": Command("fdcli.stages.seq2seq:emit_seq2seq_logits", {
            **EMITTING, **TOKEN_ENCODING, **PAIRS, **LENGTHS, "batch_size": 8}),
        "aggregate": Command("fdcli.stages.aggregate:aggregate", {
            **AGGREGATION, **SPARSE, "k": Auto("16")}),
        "distill": Command("fdcli.stages.seq2seq:distill_seq2seq", {
            **TRAINING, **READING, **PAIRS, **LORA,
            "temperature": Auto("1, or 2 for a top-k teacher whose mean tail mass is above "
                                "0.75, or a sampled teacher's own"),
            "hard_weight": 0.5, "batch_size": 8}),
        "evaluate": Command("fdcli.stages.seq2seq:evaluate_seq2seq", {
            **PAIRS, **LENGTHS, "batch_size": 8, "dtype": "auto"}),
        "simulate": Command("fdcli.stages.simulate_seq2seq:simulate_seq2seq", {
            **SIMULATION, "data": None, "source_column": None, "target_column": None,
            "domain_column": None, "label_column": None, "alpha": 1.0, "proxy_fraction": 0.2,
            "split": None, "validation_fraction": 0.1, "num_clients": 4, "rule": "confidence",
            "architectures": ("t5-mini", "t5-tiny"), "student": "t5-tiny",
            "proxy_pairs": 1000, "k": 16, "epochs": 20.0, "distill_epochs": 20.0,
            "batch_size": 16, "temperature": 2.0, "hard_weight": 0.5,
            "fedavg_rounds": 10, "fedavg_local_epochs": 2.0, "rounds": 1, "round_epochs": 2.0,
            "round_distill_epochs": 2.0, "digest_weight": 0.2, "poison": 0.0,
            "poison_kind": "random", "privacy": True, "seeds": 1}),
    },
)
