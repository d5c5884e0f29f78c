"""The privacy-utility trade-off of ``fd simulate --dp-epsilons``: at each epsilon, fd with
differentially private specialists (DP-SGD, :mod:`fdcli.dp`) and DP-FedAvg (DP-SGD in each
FedAvg client, composed over its rounds), on the same partition and at the same privacy unit
(one training example of an institution), scored on test with the same attacks as the
non-private run (docs/privacy.md).

fd's student needs no privacy mechanism of its own: it learns from the proxy set (public)
and the DP specialists' bundles, which are post-processing of DP models, so it inherits their
guarantee. The consensus is aggregated with the ``confidence`` rule: the ``coverage`` and
``weighted`` rules read label or example counts that a DP bundle does not disclose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

#: the rule of the DP consensus (it needs no counts from the clients)
DP_RULE = "confidence"


def dp_capable(config: Path, kind: str, label_names: Sequence[str], tokenizer) -> bool:
    """Whether DP-SGD can train the architecture of ``config`` (no BatchNorm, ...)."""
    from ..dp import PrivacyError, refuse_unprivate
    from ..models import load_classifier

    clf = load_classifier(config, kind, label_names, tokenizer=tokenizer, seed=0)
    try:
        refuse_unprivate(clf.model.train(), str(config))
    except PrivacyError:
        return False
    return True


def private_architectures(configs: Path, names: Sequence[str], kind: str,
                          label_names: Sequence[str], tokenizer) -> dict[str, str]:
    """Each architecture in ``names`` -> itself if DP-SGD can train it, else the first of the
    catalogue that it can (the ViT for the ResNet, which has BatchNorm)."""
    capable = {n: dp_capable(configs / f"{n}.json", kind, label_names, tokenizer)
               for n in sorted({*names, *(p.stem for p in configs.glob("*.json"))})}
    fallback = next((n for n in sorted(capable) if capable[n]), None)
    if fallback is None:
        from ..dp import PrivacyError

        raise PrivacyError(f"{configs}: no architecture of the simulation can be trained with "
                           "DP-SGD")
    return {n: n if capable[n] else fallback for n in names}


def dp_tradeoff(root: Path, fed_settings: dict[str, Any], *, epsilons: Sequence[float],
                delta: float, max_grad_norm: float, fedavg: dict[str, Any] | None,
                attack: Callable[[Path, Path], dict[str, Any]] | None, union: Path | None,
                meter, bundles: Sequence[Path] = (), teachers: Sequence[str] = (),
                log=print) -> dict[str, Any]:
    """Run the DP variants into ``root`` (``epsilon-E/`` each) and return their rows.

    ``fed_settings`` are the non-private :class:`~fdcli.stages.federation.Federation`'s
    keyword arguments (its architectures and student already swapped for DP-capable ones
    where they must be); ``fedavg`` the :func:`~fdcli.stages.weight_baselines.weight_baseline`
    keyword arguments of DP-FedAvg (or None to skip it); ``attack(model, members)`` the
    membership-inference figures of a model against its members (or None), the members of the
    student and of DP-FedAvg being ``union``, every client's data. With ``bundles`` (the
    non-private run's, one per client, of the ``teachers`` architectures) each epsilon also
    gets a PATE consensus (:func:`pate_row`)."""
    from ..dp import DPSettings
    from .federation import Federation
    from .weight_baselines import weight_baseline

    root.mkdir()
    parts = fed_settings["parts"]
    n = len(fed_settings["sizes"])
    rows = []
    for epsilon in epsilons:
        dp = DPSettings(epsilon, delta, max_grad_norm)
        folder = root / f"epsilon-{epsilon:g}"
        log(f"DP at epsilon {epsilon:g}: DP-SGD specialists, the {DP_RULE!r} consensus and a "
            "student")
        fed = Federation(**{**fed_settings, "root": folder, "rule": DP_RULE,
                            "declare_label_counts": False,
                            "train": {**fed_settings["train"], "dp_epsilon": epsilon,
                                      "dp_delta": delta, "max_grad_norm": max_grad_norm}})
        with meter.stage(f"dp_{epsilon:g}_fd"):
            record = fed.run_round(1, meter)
        spent = [_spent(d) for d in fed.specialist_dirs(1)]
        row = {"epsilon": epsilon, "method": "fd (DP specialists)",
               "accuracy": record["student"]["accuracy"],
               "macro_f1": record["student"]["macro_f1"],
               "specialists_mean_accuracy": sum(s["accuracy"] for s in
                                                record["specialists"]) / n,
               "epsilon_spent_max": max(spent), "bytes": record["uploaded_bytes"],
               "architectures": sorted({s["architecture"] for s in record["specialists"]})}
        if attack is not None:
            with meter.stage(f"dp_{epsilon:g}_attacks"):
                aucs = [attack(d, parts / f"client-{i}")["auc"]
                        for i, d in enumerate(fed.specialist_dirs(1))]
                row["attack_auc_specialists_max"] = max(aucs)
                row["attack_auc_specialists_mean"] = sum(aucs) / n
                row["attack_auc_student"] = attack(fed.student_dir(1), union)["auc"]
        rows.append(row)
        if bundles:
            with meter.stage(f"dp_{epsilon:g}_pate"):
                rows.append(pate_row(folder, fed_settings, bundles, teachers, dp, attack,
                                     union, log))
        if fedavg is not None:
            log(f"DP-FedAvg at epsilon {epsilon:g}: {fedavg['rounds']} rounds, DP-SGD in "
                "every client")
            with meter.stage(f"dp_{epsilon:g}_fedavg"):
                run = weight_baseline(folder / "dp-fedavg", parts, dp=dp, **fedavg)
            final = run["final"]
            row = {"epsilon": epsilon, "method": "DP-FedAvg", "accuracy": final["accuracy"],
                   "macro_f1": final["macro_f1"], "epsilon_spent_max": final["dp_epsilon"],
                   "bytes": run["curve"][-1]["total_bytes"],
                   "architectures": [fedavg["model_config"].stem]}
            if attack is not None:
                row["attack_auc"] = attack(folder / "dp-fedavg", union)["auc"]
            rows.append(row)
    return {"delta": delta, "max_grad_norm": max_grad_norm, "rule": DP_RULE,
            "privacy_unit": "one training example of an institution (example-level DP); "
                            "DP-FedAvg's clients compose their guarantee over every round",
            "rows": rows}


def pate_row(folder: Path, fed_settings: dict[str, Any], bundles: Sequence[Path],
             teachers: Sequence[str], dp, attack, union: Path | None, log) -> dict[str, Any]:
    """fd with a PATE consensus at ``dp.epsilon``: the clients' (non-private) bundles
    combined by Confident-GNMax, one teacher per client, the threshold at 60% of the
    teachers, its noise twice the vote noise, both set to spend ``dp.epsilon`` over every
    proxy example (:func:`fdcli.dp.pate_sigma`); a student distilled from what it answered.
    The noise is seeded, for a reproducible simulation."""
    import datasets

    from ..dp import pate_sigma
    from ..errors import FdError
    from .aggregate import aggregate
    from .distill import distill
    from .evaluate import evaluate
    from .federation import dir_bytes

    parts, configs = fed_settings["parts"], fed_settings["configs"]
    examples = len(datasets.load_from_disk(str(parts / "proxy")))
    sigma = pate_sigma(dp.epsilon, examples, dp.delta)
    threshold = 0.6 * len(bundles)
    log(f"PATE at epsilon {dp.epsilon:g}: Confident-GNMax over {len(bundles)} teachers, vote "
        f"noise {sigma:.1f}, threshold {threshold:g} (noise {2 * sigma:.1f})")
    row = {"epsilon": dp.epsilon, "method": "fd (PATE consensus)", "sigma": sigma,
           "threshold": threshold, "bytes": sum(dir_bytes(b) for b in bundles),
           "architectures": sorted(set(teachers))}
    try:
        m = aggregate(bundles, folder / "pate-consensus", rule="gnmax", dp_sigma=sigma,
                      dp_threshold=threshold, dp_threshold_sigma=2 * sigma,
                      dp_delta=dp.delta, dp_seed=fed_settings["seed"], progress=False)
    except FdError as exc:  # nothing answered: no student
        log(f"PATE at epsilon {dp.epsilon:g}: {exc}")
        return {**row, "accuracy": None, "macro_f1": None, "answered": 0,
                "epsilon_spent_max": None}
    student = folder / "pate-student"
    distill(configs / f"{fed_settings['student']}.json", parts / "proxy",
            folder / "pate-consensus", student, **fed_settings["distilling"])
    found = evaluate(student, parts / "test")
    privacy = m.producer.config["privacy"]
    row |= {"accuracy": found["accuracy"], "macro_f1": found["macro_f1"],
            "answered": privacy["answered"], "epsilon_spent_max": privacy["epsilon"]}
    if attack is not None:
        row["attack_auc_student"] = attack(student, union)["auc"]
    return row


def _spent(model_dir: Path) -> float:
    from ..meta import read_fd_meta

    return float(read_fd_meta(model_dir).get("privacy")["epsilon"])
