"""Option groups that several tasks declare alike (library keyword -> default)."""

from __future__ import annotations

from .base import Auto

#: training: a specialist or a student (the seed's 3 epochs at 5e-5)
TRAINING = {"epochs": 3.0, "learning_rate": 5e-5, "seed": 0, "dtype": "auto", "sign_key": None}
#: reading a consensus or teacher bundle from another institution
READING = {"limits": None, "trusted_keys": None}
#: how any bundle is combined: the rule and the parameters of each rule (which rule takes
#: which parameter: fdcli.rule_options)
AGGREGATION = {"rule": "confidence", "confidence_measure": "max", "tau": 1.0,
               "era_temperature": 0.1, "trim": 0.2, "prior_correction": True,
               "outlier_z": 2.0, "seed": 0, "limits": None, "trusted_keys": None,
               "sign_key": None}
#: emitting: the bundle's producer, its signature
EMITTING = {"client_id": Auto("the id in the model's fd.json, else the folder's name plus 6 "
                              "hex digits of the model's fingerprint"),
            "sign_key": None, "seed": 0, "dtype": "auto", "resume": False}
#: training a specialist
SPECIALIST = {"client_id": Auto("the id of the specialist --model continues, else the output "
                                "folder's name plus 6 random hex digits"),
              "tokenizer": None, "split": None, "val_fraction": 0.0, **TRAINING}
#: a sparse bundle's values
SPARSE = {"value_dtype": "int8"}
#: the token tasks' encodings (fdcli.stages.lm.resolve_token_encoding)
TOKEN_ENCODING = {"encoding": Auto("topk, or sample when --draws is given"),
                  "k": Auto("16 for topk"), "draws": Auto("8 for sample"),
                  "sample_temperature": 1.0, **SPARSE}
#: the simulations' models trained from scratch
SIMULATION = {"learning_rate": 2e-3, "seed": 0}
#: fine-tuning with an adapter (fdcli.adapters.Tuning)
LORA = {"lora_rank": None, "lora_alpha": Auto("twice the rank"), "lora_dropout": Auto("0.05"),
        "lora_targets": Auto("peft's for the architecture, else every linear layer"),
        "lora_type": Auto("lora"), "quantize": None, "merge": False,
        "gradient_checkpointing": False}
#: a later round of a token task's train-specialist: the consensus digested on the proxy
#: (fdcli.stages.digest)
ROUNDS = {"teacher": None, "proxy": None, "digest_weight": 0.2, "schedule": "mixed",
          "temperature": Auto("1, or 2 for a top-k consensus whose mean tail mass is above "
                              "0.75"), "trusted_keys": None}
#: DP-SGD for a specialist (fdcli.dp)
DP = {"dp_epsilon": None, "dp_delta": 1e-5, "max_grad_norm": 1.0}
