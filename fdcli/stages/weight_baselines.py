"""The weight-sharing baselines of ``fd simulate``: Flower FedAvg (fp32 and 8-bit) and FedProx
of the student architecture over the clients' partitions, and their tuning on the validation
split (the same kind of budget fd's own defaults were chosen with: a stated grid of
configurations, each scored on validation, never on test)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any, Sequence

from .. import __version__


def weight_baseline(out: Path, parts: Path, model_config: Path, report: dict[str, Any], *,
                    bits: int, rounds: int, local_epochs: float, fraction: float,
                    learning_rate: float, batch_size: int, seed: int, tokenizer,
                    proximal_mu: float | None = None, select: bool = False,
                    dp=None) -> dict[str, Any]:
    """Flower FedAvg (FedProx with ``proximal_mu``) of the student architecture over the
    clients' partitions. The global model is scored on the test split, and on the validation
    split where the partition has one, after every round. ``select`` keeps the round with the
    best validation accuracy (the earliest of equals) as the result and the saved model, the
    choice a coordinator with labelled validation data makes; otherwise the last round's.

    ``dp`` (:class:`~fdcli.dp.DPSettings`) makes it DP-FedAvg at the example level: each
    client trains with DP-SGD, its noise chosen so that all ``rounds`` of its local training
    compose to ``dp`` (:func:`~fdcli.dp.noise_for`); the result records the largest epsilon a
    client spent."""
    import datasets
    import torch

    from ..data import label_ids, resolve
    from ..fedavg import bytes_per_round, run_fedavg
    from ..models import load_classifier, predict_logits, save_classifier
    from ..report import rounds_curve
    from ..training import fit
    from .evaluate import classification_metrics

    kind, names = report["kind"], report["label_names"]
    validation = parts / "validation"
    if select and not validation.is_dir():
        raise ValueError(f"{parts}: no validation split to select FedAvg's round on")

    def model():
        return load_classifier(model_config, kind, names, tokenizer=tokenizer, seed=seed)

    def examples(path: Path):
        ds = datasets.load_from_disk(str(path))
        spec = resolve(ds, str(path), label_names=names)
        return list(ds[spec.input_column]), label_ids(ds, spec)

    ledger: dict[int, dict[str, Any]] = {}  # DP: each client's noise and spent history

    def train_fn(partition: int, state, config):
        clf = model()
        clf.model.load_state_dict(state)
        values, labels = examples(parts / f"client-{partition}")
        if dp is not None:
            metrics = _private_round(clf, values, labels, dp, ledger.setdefault(partition, {}),
                                     rounds=rounds, local_epochs=local_epochs,
                                     learning_rate=learning_rate, batch_size=batch_size,
                                     seed=seed + int(config.get("server-round", 0)))
            return clf.model.state_dict(), len(values), metrics
        metrics = fit(clf, values, labels, epochs=local_epochs, learning_rate=learning_rate,
                      batch_size=batch_size, seed=seed + int(config.get("server-round", 0)),
                      progress=False, proximal_mu=float(config.get("proximal-mu", 0.0)))
        return clf.model.state_dict(), len(values), {"train_loss": metrics.get("train_loss",
                                                                               0.0)}

    server = model()
    splits = {"": examples(parts / "test")}
    if validation.is_dir():
        splits["validation_"] = examples(validation)
    best: dict[str, Any] = {}

    def evaluate_fn(server_round: int, state):
        server.model.load_state_dict(state)
        scores = {}
        for prefix, (values, labels) in splits.items():
            found = classification_metrics(predict_logits(server, values),
                                           torch.tensor(labels), len(names))
            scores.update({f"{prefix}{k}": v for k, v in found.items()
                           if not prefix or k == "accuracy"})
        if select and server_round > 0 and scores["validation_accuracy"] > best.get(
                "validation_accuracy", -1.0):
            best.update(round=server_round, validation_accuracy=scores["validation_accuracy"],
                        state={k: v.clone() for k, v in state.items()})
        return scores

    run = run_fedavg({k: v.clone() for k, v in server.model.state_dict().items()}, train_fn,
                     num_clients=len(report["sizes"]["clients"]), num_rounds=rounds,
                     bits=bits, fraction=fraction, seed=seed, evaluate_fn=evaluate_fn,
                     proximal_mu=proximal_mu)
    chosen = best["round"] if select else rounds
    server.model.load_state_dict(best["state"] if select else run.state)
    out.mkdir()
    settings = {"bits": bits, "rounds": rounds, "local_epochs": local_epochs,
                "learning_rate": learning_rate, "fraction": fraction}
    if proximal_mu is not None:
        settings["proximal_mu"] = proximal_mu
    if dp is not None:
        settings["dp_epsilon"] = max(c["epsilon"] for c in ledger.values())
        settings["dp_delta"] = dp.delta
    save_classifier(server, out, {"fd_version": __version__,
                                  "stage": "fedprox" if proximal_mu is not None else "fedavg",
                                  "task": "classification", "kind": kind, "label_names": names,
                                  "architecture": server.architecture,
                                  "config": {**settings, "selected_round": chosen}})
    traffic = bytes_per_round(run.traffic)
    curve = rounds_curve(run.rounds, traffic)
    final = next(r for r in run.rounds if r["round"] == chosen)
    return {"final": {"accuracy": final["accuracy"], "macro_f1": final["macro_f1"],
                      **({"validation_accuracy": final["validation_accuracy"]}
                         if "validation_accuracy" in final else {}),
                      "round": chosen, **settings},
            "curve": curve, "traffic": traffic}


def _private_round(clf, values, labels, dp, client: dict[str, Any], *, rounds: int,
                   local_epochs: float, learning_rate: float, batch_size: int,
                   seed: int) -> dict[str, float]:
    """One client's local DP-SGD of a DP-FedAvg round; ``client`` keeps its noise (planned
    for every round at its first) and its accountant's history."""
    from ..dp import noise_for, private_fit, schedule
    from ..models import batch_inputs

    rate, steps = schedule(len(values), batch_size, local_epochs)
    if "noise" not in client:
        client.update(noise=noise_for(dp, rate, steps * rounds), history=[])
    metrics, guarantee = private_fit(
        clf.model, batch_inputs(clf, values), labels, epochs=local_epochs,
        learning_rate=learning_rate, batch_size=batch_size, seed=seed, dp=dp,
        prior=client["history"], noise=client["noise"], where=clf.architecture,
        progress=False)
    client.update(history=guarantee["history"], epsilon=guarantee["epsilon"])
    return {"train_loss": metrics["train_loss"]}


def tune(out: Path, parts: Path, model_config: Path, report: dict[str, Any], *,
         learning_rates: Sequence[float], local_epochs: Sequence[float], log=print,
         **settings) -> dict[str, Any]:
    """FedAvg (fp32) at every ``learning_rates`` x ``local_epochs`` configuration, each into
    ``out/lr<LR>-ep<E>``; the one with the best validation accuracy (of the selected round
    with ``select``, else the last) is chosen, the first of equals. Returns the grid, each
    configuration's validation and test accuracy, and the chosen run
    (:func:`weight_baseline`'s result) and folder."""
    if not (parts / "validation").is_dir():
        raise ValueError(f"{parts}: tuning FedAvg needs a validation split (a partition with "
                         "validation_fraction > 0)")
    out.mkdir()
    tried, runs = [], {}
    for lr, epochs in itertools.product(learning_rates, local_epochs):
        name = f"lr{lr:g}-ep{epochs:g}"
        log(f"fedavg tuning: {name}")
        run = weight_baseline(out / name, parts, model_config, report, bits=32,
                              learning_rate=lr, local_epochs=epochs, **settings)
        runs[name] = run
        tried.append({"name": name, "learning_rate": lr, "local_epochs": epochs,
                      "validation_accuracy": run["final"]["validation_accuracy"],
                      "test_accuracy": run["final"]["accuracy"],
                      "seconds": run["curve"][-1]["seconds"]})
    chosen = max(tried, key=lambda t: t["validation_accuracy"])  # max keeps the first of ties
    return {"grid": {"learning_rate": list(learning_rates), "local_epochs": list(local_epochs)},
            "configurations": len(tried), "tried": tried, "chosen": chosen,
            "run": runs[chosen["name"]], "folder": out / chosen["name"]}


def adopt(tuned: dict[str, Any], out: Path) -> dict[str, Any]:
    """The chosen tuning run as the ``fedavg`` baseline: its model folder copied to ``out``."""
    shutil.copytree(tuned["folder"], out)
    return tuned["run"]
