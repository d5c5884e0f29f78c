"""FedAvg of LoRA adapters through Flower: the weight-sharing baseline of the open-FM
ecosystem (FlowerTune, OpenFedLLM). Every institution starts from the same base model, trains
only a LoRA adapter on its own text, and sends the adapter's weights; the server averages
them (weighted by training blocks) and sends the average back. Messages go through fd's
in-process Flower grid (:mod:`fdcli.fedavg`), so the bytes reported are the bytes a
deployment would send.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..adapters import LoraSpec, Tuning
from ..data import DataError, load_local
from ..lm import load_lm, save_lm, text_blocks
from ..models import fingerprint_model
from ..outputs import atomic_dir, check_free


def fedavg_lora(base: str | Path, clients: Sequence[str | Path], out: str | Path, *,
                spec: LoraSpec, rounds: int = 3, local_epochs: float = 1.0,
                learning_rate: float = 2e-4, batch_size: int = 8, max_length: int = 128,
                tokenizer: str | Path | None = None, text_column: str | None = None,
                bits: int = 32, seed: int = 0, overwrite: bool = False,
                progress: bool = False) -> dict[str, Any]:
    """Run ``rounds`` of Flower FedAvg of a LoRA adapter on ``base`` (a model folder or GGUF
    file) over ``clients`` (each a local text dataset; client i trains on its blocks for
    ``local_epochs`` per round). Writes the final global adapter to ``out`` (an adapter
    folder) and returns fd.json's contents, with ``traffic`` (bytes per round, down and up)
    and ``uploaded_bytes`` / ``total_bytes`` over all rounds."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from ..fedavg import bytes_per_round, run_fedavg
    from ..training import fit_lm

    if not clients:
        raise ValueError("fedavg_lora needs at least one client dataset")
    check_free(Path(out), overwrite)
    tuning = Tuning(spec)
    lm = tuning.load(load_lm, base, "causal-lm", tokenizer=tokenizer, seed=seed)
    blocks = []
    for path in clients:
        tb = text_blocks(load_local(path, None, whole_text_files=True), str(path),
                         lm.tokenizer, text_column=text_column, max_length=max_length)
        blocks.append(tb.blocks)
    if any(not b for b in blocks):
        raise DataError("every client needs text of two or more tokens")
    initial = {k: v.clone() for k, v in get_peft_model_state_dict(lm.model).items()}

    def train_fn(partition: int, state, config):
        # one model in this process: the clients train in turn, each from the global adapter
        set_peft_model_state_dict(lm.model, state)
        mine = list(blocks[partition])
        random.Random(seed + partition).shuffle(mine)
        fit_lm(lm, mine, epochs=local_epochs, learning_rate=learning_rate,
               batch_size=batch_size, progress=progress,
               seed=seed + 1000 * int(config.get("server-round", 0)) + partition)
        return ({k: v.detach().clone() for k, v in get_peft_model_state_dict(lm.model).items()},
                len(mine), {})

    run = run_fedavg(initial, train_fn, num_clients=len(clients), num_rounds=rounds,
                     bits=bits, seed=seed)
    set_peft_model_state_dict(lm.model, run.state)
    traffic = bytes_per_round(run.traffic)
    config = {"task": "causal-lm", "base": str(base), "clients": [str(c) for c in clients],
              "rounds": rounds, "local_epochs": local_epochs, "learning_rate": learning_rate,
              "batch_size": batch_size, "max_length": max_length, "bits": bits, "seed": seed,
              **tuning.record()}
    with atomic_dir(out, overwrite) as tmp:
        meta = {"fd_version": __version__, "stage": "fedavg-lora", "client_id": "fedavg-lora",
                "task": "causal-lm", "architecture": lm.architecture,
                "vocab_size": lm.vocab_size, "train_tokens": sum(len(b) for c in blocks
                                                                 for b in c),
                "config": config, "metrics": {"traffic": traffic,
                                              "uploaded_bytes": sum(t["up_bytes"]
                                                                    for t in traffic),
                                              "total_bytes": sum(t["up_bytes"] + t["down_bytes"]
                                                                 for t in traffic)},
                "model_fingerprint": fingerprint_model(lm.model)}
        save_lm(lm, tmp, meta)
    return meta
