"""Bytes on Flower's wire: fd's Flower app against FedAvg under the same engine, and how a
large bundle crosses.

1. fd over Flower (the ServerApp's coordinator and the ClientApp, on an in-process grid that
   sends every message as Flower's protobuf wire form): digits, 3 institutions (Dirichlet
   alpha 1.0), tiny ViTs, 2 rounds; the protobuf size of every message each way, and the
   student's test accuracy.
2. FedAvg with Flower's own strategy over the same grid, same ViT, 2 rounds: its messages
   counted the same way. And the size of one FedAvg message for a BERT-base-sized classifier
   (random init from its config), since a bundle's size does not grow with the model.
3. A large bundle folder (``--big-mib`` of shard bytes) as a Flower message, split the way the
   Deployment Engine pushes it (Flower's inflatable objects: an ``Array`` is cut into
   ``ArrayChunk`` objects of at most 5 MiB), put back together from those objects alone and
   written out: byte-identical or not, and the time each way.

Prints JSON (and writes it to ``--out``).

    python benchmarks/flower_bytes.py --out benchmarks/results/flower/bytes.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def world(root: Path, seed: int) -> dict:
    from fdcli.stages.partition import partition
    from fdcli.stages.simulate import ARCHITECTURES, digits_dataset

    partition("sklearn-digits", root / "parts", num_clients=3, alpha=1.0,
              validation_fraction=0.0, seed=seed, dataset=digits_dataset())
    (root / "vit.json").write_text(json.dumps(ARCHITECTURES["vit"]))
    return {"parts": root / "parts", "config": root / "vit.json"}


def fd_over_flower(root: Path, w: dict, epochs: float) -> dict:
    from fdcli.fedavg import LocalGrid, server_identity
    from fdcli.flower.client_app import app
    from fdcli.flower.coordinator import coordinate
    from fdcli.flower.settings import ServerSettings
    from fdcli.stages.evaluate import evaluate

    parts = w["parts"]
    nodes = [{"data": str(parts / f"client-{i}"), "proxy": str(parts / "proxy"),
              "model": str(w["config"]), "work": str(root / f"institution-{i}"),
              "client-id": f"client-{i}"} for i in range(3)]
    settings = ServerSettings.from_config({
        "out": str(root / "run"), "proxy": str(parts / "proxy"), "student": str(w["config"]),
        "rounds": 2, "min-clients": 3, "train.epochs": epochs, "train.learning-rate": 2e-3,
        "distill.epochs": epochs, "distill.learning-rate": 2e-3,
        "round-epochs": 5.0, "round-distill-epochs": 10.0})
    started = time.perf_counter()
    with server_identity(1):
        record = coordinate(LocalGrid(app, 3, node_configs=nodes), settings, 1, log=lambda _: 0)
    seconds = time.perf_counter() - started
    rounds = [{"round": r["round"], "down_bytes": r["down_bytes"], "up_bytes": r["up_bytes"],
               "largest_bundle_message_bytes": r["largest_bundle_bytes"],
               "student_test_accuracy": evaluate(r["student"], parts / "test")["accuracy"]}
              for r in record["rounds"]]
    return {"rounds": rounds, "seconds": seconds}


def fedavg_over_flower(w: dict) -> dict:
    import torch

    from fdcli.fedavg import bytes_per_round, run_fedavg
    from fdcli.models import load_classifier

    clf = load_classifier(w["config"], "image", [str(i) for i in range(10)])
    state = {k: v.clone() for k, v in clf.model.state_dict().items()}

    def train_fn(partition, received, config):  # the bytes do not depend on the training
        return received, 1, {}

    out = run_fedavg(state, train_fn, num_clients=3, num_rounds=2)
    params = sum(v.numel() for v in state.values() if torch.is_floating_point(v))
    return {"parameters": params, "rounds": bytes_per_round(out.traffic)}


def bert_base_message() -> dict:
    from flwr.app import Message, RecordDict
    from transformers import BertConfig, BertForSequenceClassification

    from fdcli.fedavg import pack, server_identity
    from fdcli.flower.coordinator import message_bytes

    model = BertForSequenceClassification(BertConfig(num_labels=10))
    state = model.state_dict()
    with server_identity(1):
        size = message_bytes(Message(RecordDict({"arrays": pack(state)}), 2, "train"))
    return {"parameters": sum(v.numel() for v in state.values()), "message_bytes": size}


def big_bundle(root: Path, mib: int) -> dict:
    """A ``mib`` MiB folder through Flower's object split and back."""
    import numpy as np
    from flwr.app import Message, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from fdcli.fedavg import server_identity
    from fdcli.flower.wire import folder_to_record, record_to_folder

    src = root / "big"
    src.mkdir()
    rng = np.random.default_rng(0)
    (src / "manifest.json").write_bytes(b"{}")
    per = mib // 4
    for i in range(4):
        (src / f"shard-{i:05d}.safetensors.zst").write_bytes(
            rng.integers(0, 256, per << 20, dtype=np.uint8).tobytes())
    started = time.perf_counter()
    with server_identity(1):
        message = Message(RecordDict({"bundle": folder_to_record(src)}), 2, "train")
        objects = get_all_nested_objects(message)
        contents = {oid: obj.deflate() for oid, obj in objects.items()}
    sent = time.perf_counter() - started
    sizes = [len(c) for c in contents.values()]
    started = time.perf_counter()
    back = inflate_object_from_contents(message.object_id, dict(contents))
    out = record_to_folder(back.content.array_records["bundle"], root / "received", "bench")
    received = time.perf_counter() - started
    same = all((out / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
    return {"bundle_bytes": sum(p.stat().st_size for p in src.iterdir()),
            "flower_objects": len(sizes), "largest_object_bytes": max(sizes),
            "object_bytes_total": sum(sizes), "byte_identical": same,
            "split_seconds": sent, "joined_and_written_seconds": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="fd-flower-bytes-") as tmp:
        root = Path(tmp)
        w = world(root, args.seed)
        fd = fd_over_flower(root, w, args.epochs)
        fedavg = fedavg_over_flower(w)
        result = {"benchmark": "flower_bytes", "fd": fd, "fedavg_same_vit": fedavg,
                  "fedavg_bert_base_one_message": bert_base_message(),
                  "large_bundle": big_bundle(root, args.big_mib)}
    for a, b in zip(fd["rounds"], fedavg["rounds"]):
        a["fedavg_to_fd_ratio"] = round((b["down_bytes"] + b["up_bytes"])
                                        / (a["down_bytes"] + a["up_bytes"]), 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
