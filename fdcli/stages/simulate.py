"""fd simulate: a whole federation on one machine, with real artifacts on disk, against the
baselines it has to beat.

It partitions a labelled dataset (scikit-learn's bundled digits by default, so no download),
trains one specialist per client, one after another (mixed architectures: tiny ViTs and tiny
ResNets for images, tiny BERTs and DistilBERTs for text), emits their bundles on the proxy
split, aggregates them, distills a student, and runs the baselines with the student's
architecture on the same partition: FedAvg through Flower (fp32 and 8-bit), each specialist
alone and a student distilled from a single teacher, and centralized training on the union
of the client data. Everything is scored on the global test split that no client saw;
membership-inference attacks, the bytes each method sends, and the wall time and peak memory
of each stage go into ``results.json``, ``report.md`` and ``accuracy_vs_bytes.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..outputs import fresh_dir
from ..results import Score, write_results

#: tiny random-init architectures for the digits (8x8 images); a config file per entry.
#: ``image_size`` sets the image processor's resize (the ResNet reads the digits at 16x16).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit": {"model_type": "vit", "image_size": 8, "patch_size": 2, "num_channels": 3,
            "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 96},
    "resnet": {"model_type": "resnet", "image_size": 16, "num_channels": 3,
               "embedding_size": 16, "hidden_sizes": [32, 64], "depths": [1, 1],
               "layer_type": "basic", "downsample_in_first_stage": False},
}
#: tiny random-init text classifiers; ``vocab_size`` is set from the word tokenizer that the
#: simulation trains on the (public) proxy texts.
TEXT_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "bert": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 128},
    "distilbert": {"model_type": "distilbert", "dim": 64, "n_layers": 2, "n_heads": 2,
                   "hidden_dim": 128, "max_position_embeddings": 128},
}
DEFAULTS = {"image": (("vit", "resnet"), "resnet"), "text": (("bert", "distilbert"), "bert")}
BASELINES = ("fedavg", "fedprox", "standalone", "centralized")


def _improved(history: list[dict[str, Any]]) -> bool:
    """Whether the newest round's student beat every earlier one on validation."""
    *before, newest = [h["student"]["validation_accuracy"] for h in history]
    return newest > max(before)


def digits_dataset():
    """scikit-learn's 1,797 handwritten digits as an image dataset with named labels."""
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = [Image.fromarray((row.reshape(8, 8) * 255 / 16).astype(np.uint8), "L") for row in x]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    return datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features)


def simulate(out: str | Path, *, data: str | Path | None = None, num_clients: int = 5,
             alpha: float = 1.0, proxy_fraction: float = 0.2, validation_fraction: float = 0.1,
             coordinator_validation: bool = False, rule: str = "coverage",
             compare_rules: Sequence[str] = (),
             architectures: Sequence[str] | None = None, student: str | None = None,
             epochs: float = 60.0, distill_epochs: float = 100.0, learning_rate: float = 2e-3,
             batch_size: int = 32, temperature: float = 2.0, rounds: int = 2,
             round_epochs: float = 5.0, round_distill_epochs: float = 30.0,
             digest_weight: float = 0.2, schedule: str = "mixed", from_student: bool = False,
             proxy_slices: int = 1, sharpen: float | None = 0.1,
             poison: float = 0.0, poison_kind: str = "flip",
             baselines: Sequence[str] = ("fedavg", "standalone", "centralized"),
             fedavg_rounds: int = 20, fedavg_local_epochs: float = 3.0,
             fedavg_fraction: float = 1.0, fedavg_tune_lrs: Sequence[float] = (),
             fedavg_tune_epochs: Sequence[float] = (), fedprox_mu: float = 0.01,
             target_fraction: float = 0.95, privacy: bool = True,
             dp_epsilons: Sequence[float] = (), dp_delta: float = 1e-5,
             max_grad_norm: float = 1.0, seed: int = 0,
             seeds: int = 1, overwrite: bool = False, progress: bool = True,
             log=print) -> dict[str, Any]:
    """Run the federation and its baselines; write ``out/results.json``, ``out/report.md``
    and ``out/accuracy_vs_bytes.png``; return the results.

    The defaults suit tiny models trained from scratch (60 epochs, 100 for distillation, at a
    learning rate of 2e-3; FedAvg: 20 rounds of 3 local epochs, the same 60 epochs per
    client); the stage defaults (3 epochs, 5e-5) suit fine-tuning pretrained models.
    ``target_fraction`` of the centralized accuracy is the target of ``bytes_to_target``.

    ``rounds`` > 1 sends each round's consensus back to the clients, which update their
    specialists from it and their private data for ``round_epochs`` (``schedule`` and
    ``digest_weight`` as in :func:`~fdcli.stages.train_specialist.train_specialist`), or start
    from the current student with ``from_student``; the student continues for
    ``round_distill_epochs`` on each new consensus. ``proxy_slices`` > 1 gives each round
    a fresh slice of the proxy set to emit on, in turn (the student learns the newest
    consensus of every slice). ``sharpen`` applies DS-FL's entropy reduction at that
    temperature to every consensus. The fd curve gets one point per round,
    with bytes both ways (:mod:`fdcli.stages.federation`). ``compare_rules`` students are
    distilled from the last round's bundles.

    ``poison`` is the fraction of clients that are hostile: their bundles are replaced by
    ``poison_kind`` predictions (:mod:`fdcli.poison`) every round. The results name them
    and the clients the aggregate's outlier report flagged.

    ``validation_fraction`` of the data becomes a labelled validation split that no client,
    proxy or test sees (:func:`~fdcli.stages.partition.partition`); every student and
    baseline round is scored on it as well as on test. With ``coordinator_validation`` the
    coordinator may use it (a protocol choice, off by default): ``rounds`` becomes a maximum,
    the rounds stop after the first that does not improve the student's validation accuracy,
    and the reported student is the best round's; FedAvg and FedProx likewise report their
    best round on validation. Without it, the last round's models are reported.
    ``fedavg_tune_lrs`` and ``fedavg_tune_epochs`` tune FedAvg on validation over their grid
    (:func:`~fdcli.stages.weight_baselines.tune`); the chosen configuration also runs the
    8-bit FedAvg and FedProx (``fedprox_mu``). ``seeds`` > 1 runs the whole comparison at
    ``seed``, ``seed + 1``, ... into ``out/seed-<s>`` and combines them
    (:mod:`fdcli.stages.seeds`).

    ``dp_epsilons`` adds the privacy-utility trade-off (:mod:`fdcli.stages.dp_tradeoff`): at
    each epsilon, one-shot fd with DP-SGD specialists (``dp_delta``, ``max_grad_norm``) and,
    with the ``fedavg`` baseline, DP-FedAvg; results ``dp``, a table in the report and
    ``privacy_utility.png``.
    """
    if seeds > 1:
        settings = {k: v for k, v in locals().items() if k not in ("out", "seeds", "seed",
                                                                  "overwrite", "log")}
        from .seeds import over_seeds

        return over_seeds(simulate, out, seeds=seeds, first_seed=seed, overwrite=overwrite,
                          log=log, **settings)
    from ..meter import StageMeter
    from ..report import bytes_to_target, one_shot_curve, plot, ratios_to, report_markdown
    from .distill import distill
    from .evaluate import evaluate
    from .federation import Federation, flagged_clients, scores
    from .partition import partition
    from ..poison import POISON_KINDS, poisoned_clients
    from .digest import SCHEDULES
    from .train_specialist import train_specialist
    from .weight_baselines import adopt, tune, weight_baseline

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {list(BASELINES)}")
    for name, value in (("target_fraction", target_fraction),
                        ("fedavg_fraction", fedavg_fraction)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    if rounds < 1 or not round_epochs > 0 or not round_distill_epochs > 0:
        raise ValueError(f"rounds must be >= 1, round_epochs and round_distill_epochs > 0; "
                         f"got {rounds}, {round_epochs} and {round_distill_epochs}")
    if proxy_slices < 1:
        raise ValueError(f"proxy_slices must be >= 1, got {proxy_slices}")
    if poison_kind not in POISON_KINDS:
        raise ValueError(f"poison kind must be one of {list(POISON_KINDS)}, got "
                         f"{poison_kind!r}")
    poisoned = {i: poison_kind for i in poisoned_clients(num_clients, poison, seed)}
    if schedule not in SCHEDULES or not 0 < digest_weight <= 1:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)} and digest_weight in "
                         f"(0, 1]; got {schedule!r} and {digest_weight}")
    if fedavg_rounds < 1 or not fedavg_local_epochs > 0:
        raise ValueError(f"fedavg_rounds must be >= 1 and fedavg_local_epochs > 0; got "
                         f"{fedavg_rounds} and {fedavg_local_epochs}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if dp_epsilons:
        from ..dp import DPSettings

        for e in dp_epsilons:
            DPSettings(e, dp_delta, max_grad_norm)
    tuning = bool(fedavg_tune_lrs or fedavg_tune_epochs)
    if any(not v > 0 for v in [*fedavg_tune_lrs, *fedavg_tune_epochs]) or not fedprox_mu >= 0:
        raise ValueError(f"the FedAvg tuning grid's values must be > 0 and fedprox_mu >= 0; "
                         f"got {list(fedavg_tune_lrs)}, {list(fedavg_tune_epochs)} and "
                         f"{fedprox_mu}")
    if (coordinator_validation or tuning) and not validation_fraction > 0:
        raise ValueError("coordinator_validation and FedAvg tuning choose on the validation "
                         "split; validation_fraction must be > 0")
    meter = StageMeter()
    with fresh_dir(out, overwrite) as root:
        with meter.stage("partition"):
            parts = root / "partition"
            report = partition(data or "sklearn-digits", parts, num_clients=num_clients,
                               alpha=alpha, proxy_fraction=proxy_fraction,
                               validation_fraction=validation_fraction, seed=seed,
                               dataset=None if data else digits_dataset())
            kind = report["kind"]
            catalogue = ARCHITECTURES if kind == "image" else TEXT_ARCHITECTURES
            architectures = list(architectures or DEFAULTS[kind][0])
            student = student or DEFAULTS[kind][1]
            wrong = [a for a in [*architectures, student] if a not in catalogue]
            if wrong:
                raise ValueError(f"unknown {kind} architecture(s) {wrong}; expected some of "
                                 f"{sorted(catalogue)}")
            configs, tokenizer = _write_configs(root, parts, kind, catalogue)
        config = {"data": str(data) if data else "sklearn digits", "kind": kind,
                  "num_clients": num_clients, "alpha": alpha, "proxy_fraction": proxy_fraction,
                  "validation_fraction": validation_fraction,
                  "coordinator_validation": coordinator_validation, "rule": rule,
                  "compare_rules": list(compare_rules),
                  "architectures": architectures, "student": student, "epochs": epochs,
                  "distill_epochs": distill_epochs, "learning_rate": learning_rate,
                  "batch_size": batch_size, "temperature": temperature, "rounds": rounds,
                  "round_epochs": round_epochs, "round_distill_epochs": round_distill_epochs,
                  "digest_weight": digest_weight, "schedule": schedule,
                  "from_student": from_student, "proxy_slices": proxy_slices,
                  "sharpen": sharpen, "poison": poison,
                  "poison_kind": poison_kind if poisoned else None,
                  "baselines": list(baselines), "fedavg_rounds": fedavg_rounds,
                  "fedavg_local_epochs": fedavg_local_epochs,
                  "fedavg_fraction": fedavg_fraction,
                  "fedavg_tune_lrs": list(fedavg_tune_lrs),
                  "fedavg_tune_epochs": list(fedavg_tune_epochs), "fedprox_mu": fedprox_mu,
                  "target_fraction": target_fraction, "dp_epsilons": list(dp_epsilons),
                  "dp_delta": dp_delta, "max_grad_norm": max_grad_norm, "seed": seed}
        train = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                     seed=seed, progress=progress, tokenizer=tokenizer)
        distilling = dict(temperature=temperature, epochs=distill_epochs,
                          learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                          progress=progress, tokenizer=tokenizer)
        test = parts / "test"
        sizes = report["sizes"]["clients"]
        fed_settings = dict(root=root, parts=parts, configs=configs,
                            label_names=report["label_names"], sizes=sizes,
                            architectures=architectures, student=student, rule=rule,
                            train=train, distilling=distilling, round_epochs=round_epochs,
                            round_distill_epochs=round_distill_epochs,
                            digest_weight=digest_weight, schedule=schedule,
                            from_student=from_student,
                            declare_label_counts="coverage" in [rule, *compare_rules],
                            proxy_slices=proxy_slices, sharpen=sharpen, seed=seed,
                            progress=progress, log=log)
        fed = Federation(**fed_settings, poisoned=poisoned)
        for r in range(1, rounds + 1):
            fed.run_round(r, meter)
            if coordinator_validation and r > 1 and not _improved(fed.history):
                log(f"round {r} did not improve the student's validation accuracy: stopping")
                break
        ran = len(fed.history)
        last = fed.history[-1]
        chosen = max(fed.history, key=lambda h: h["student"]["validation_accuracy"]) \
            if coordinator_validation else last
        specialists, alone = last["specialists"], fed.history[0]
        students = {rule: {**chosen["student"], "round": chosen["round"]}}
        for other in [c for c in compare_rules if c != rule]:
            students[other] = fed.aggregate_and_distill(ran, other, meter, fresh=True)
        curves = {"fd": fed.curve()}
        results_baselines: dict[str, dict[str, Any]] = {}
        members_union = None
        if "standalone" in baselines:
            with meter.stage("standalone_student"):
                single = max(range(num_clients), key=lambda i: sizes[i])
                log(f"standalone: a {student} distilled from client {single}'s bundle alone")
                one = root / "standalone-student"
                distill(configs / f"{student}.json", parts / "proxy", fed.bundle_dirs(1)[single],
                        one, **distilling)
                firsts = alone["specialists"]  # round 1: trained on their own data only
                results_baselines["standalone"] = {
                    "accuracy": sum(s["accuracy"] for s in firsts) / num_clients,
                    "macro_f1": sum(s["macro_f1"] for s in firsts) / num_clients,
                    "best_accuracy": max(s["accuracy"] for s in firsts),
                    "what": "each specialist alone on the test split (mean over clients)"}
                results_baselines["standalone_student"] = scores(
                    evaluate(one, test), teacher=f"client-{single}",
                    what="the student distilled from the largest client's bundle alone")
                curves["fd_single_teacher"] = one_shot_curve(
                    alone["uploaded_per_client"][single], 0,
                    results_baselines["standalone_student"])
        if "centralized" in baselines or privacy:
            members_union = _union([parts / f"client-{i}" for i in range(num_clients)],
                                   root / "union")
        if "centralized" in baselines:
            with meter.stage("centralized"):
                log(f"centralized reference: a {student} on the union of the client data")
                train_specialist(members_union, configs / f"{student}.json",
                                 root / "centralized", client_id="centralized",
                                 labels=report["label_names"], **train)
                results_baselines["centralized"] = scores(evaluate(root / "centralized",
                                                                    test))
        fedavg_runs: dict[str, dict[str, Any]] = {}
        weights = dict(rounds=fedavg_rounds, fraction=fedavg_fraction, batch_size=batch_size,
                       seed=seed, tokenizer=tokenizer, select=coordinator_validation)
        local = dict(learning_rate=learning_rate, local_epochs=fedavg_local_epochs)
        tuned = None
        if tuning and ({"fedavg", "fedprox"} & set(baselines)):
            with meter.stage("fedavg_tuning"):
                tuned = tune(root / "fedavg-tuning", parts, configs / f"{student}.json",
                             report, learning_rates=fedavg_tune_lrs or [learning_rate],
                             local_epochs=fedavg_tune_epochs or [fedavg_local_epochs],
                             log=log, **weights)
                local = {k: tuned["chosen"][k] for k in local}
                log(f"fedavg tuning chose learning rate {local['learning_rate']:g}, "
                    f"{local['local_epochs']:g} local epochs (validation accuracy "
                    f"{tuned['chosen']['validation_accuracy']:.3f})")
        plan = [(n, b, None) for n, b in (("fedavg", 32), ("fedavg_8bit", 8))
                if "fedavg" in baselines] + \
            [("fedprox", 32, fedprox_mu)] * ("fedprox" in baselines)
        for name, bits, mu in plan:
            with meter.stage(name):
                log(f"{name}: {fedavg_rounds} Flower rounds of {local['local_epochs']:g} local "
                    f"epochs at learning rate {local['learning_rate']:g}, {bits}-bit arrays"
                    + (f", proximal mu {mu:g}" if mu is not None else ""))
                if name == "fedavg" and tuned is not None:
                    fedavg_runs[name] = adopt(tuned, root / name)
                else:
                    fedavg_runs[name] = weight_baseline(
                        root / name, parts, configs / f"{student}.json", report, bits=bits,
                        proximal_mu=mu, **weights, **local)
                results_baselines[name] = fedavg_runs[name]["final"]
                curves[name] = fedavg_runs[name]["curve"]
        privacy_report: dict[str, Any] = {}
        if privacy:
            with meter.stage("privacy"):
                log("membership inference: specialists, student and baselines")
                trained = [n for n in ("fedavg", "fedavg_8bit", "fedprox", "centralized")
                           if (root / n).is_dir()]
                privacy_report = _privacy(root, parts, test, members_union,
                                          configs / f"{student}.json", fed.specialist_dirs(ran),
                                          fed.student_dir(students[rule]["round"]), train,
                                          trained)
        dp_results = None
        if dp_epsilons:
            dp_results = _dp_variants(fed_settings, report, tokenizer, kind, weights,
                                      local, dp_epsilons, dp_delta, max_grad_norm,
                                      "fedavg" in baselines, privacy_report, meter, log)
        central = results_baselines.get("centralized")
        target = target_fraction * central["accuracy"] if central else None
        hits = {name: bytes_to_target(c, target) for name, c in curves.items()} \
            if target is not None else {}
        best = max(specialists, key=lambda s: s["accuracy"])
        from ..devices import device

        results = {
            "fd_version": __version__, "config": config, "device": device().type,
            "partition": {"sizes": report["sizes"],
                          "client_label_histograms": report["client_label_histograms"]},
            "specialists": specialists,
            "student": {"architecture": student, **students[rule]},
            "students_by_rule": students,
            "best_specialist_accuracy": best["accuracy"],
            "baselines": results_baselines,
            "target_accuracy": target,
            "curves": curves,
            "selected_round": students[rule]["round"],
            "fedavg_tuning": {k: v for k, v in tuned.items() if k not in ("run", "folder")}
            if tuned else None,
            "rounds": [{"round": h["round"],
                        "teacher_proxy_accuracy": h["teacher_proxy_accuracy"],
                        "student_accuracy": h["student"]["accuracy"],
                        "student_validation_accuracy": h["student"].get(
                            "validation_accuracy"),
                        "seconds": h["seconds"],
                        "specialists_mean_accuracy": sum(
                            s["accuracy"] for s in h["specialists"]) / num_clients,
                        "specialists_accuracy": [s["accuracy"] for s in h["specialists"]],
                        "uploaded_bytes": h["uploaded_bytes"],
                        "downloaded_bytes": h["downloaded_bytes"],
                        "cumulative_bytes": p["total_bytes"]}
                       for h, p in zip(fed.history, curves["fd"])],
            "bytes": {"fd": {"uploaded_per_client": last["uploaded_per_client"],
                             "uploaded_total": curves["fd"][-1]["uploaded_bytes"],
                             "downloaded_total": curves["fd"][-1]["total_bytes"]
                             - curves["fd"][-1]["uploaded_bytes"],
                             "total": curves["fd"][-1]["total_bytes"]},
                      **{name: {"per_round": run["traffic"],
                                "uploaded_total": run["curve"][-1]["uploaded_bytes"],
                                "total": run["curve"][-1]["total_bytes"]}
                         for name, run in fedavg_runs.items()}},
            "bytes_to_target": hits,
            "bytes_ratio_to_fd": ratios_to(hits, "fd"),
            "bytes_to_student_accuracy": {
                name: bytes_to_target(c, students[rule]["accuracy"])
                for name, c in curves.items()},
            "privacy": privacy_report,
            "dp": dp_results,
            "poisoned_clients": [f"client-{i}" for i in sorted(poisoned)],
            "outliers_flagged": flagged_clients(fed.teacher_dir(ran)),
        }
        if central:
            results["centralized"] = {"architecture": student, **central}
        with meter.stage("report"):
            results["timing"] = meter.summary()
            if target is not None:
                plot(results, root / "accuracy_vs_bytes.png")
            if dp_results:
                from ..report import plot_privacy_utility

                plot_privacy_utility(results, root / "privacy_utility.png")
            (root / "report.md").write_text(report_markdown(results))
        results["timing"] = meter.summary()
        results = write_results(root, "classification", results, typed_scores(results, seed))
    return results


def typed_scores(results: dict[str, Any], seed: int) -> list[Score]:
    """The typed scores of a classification simulation (:mod:`fdcli.results`): the student
    of every rule (method ``fd``), and each baseline, with what each sent."""
    sent = results["bytes"]
    out = [Score.one("fd", seed, s, variant={"rule": rule},
                     sent=sent["fd"]["total"] if rule == results["config"]["rule"] else None)
           for rule, s in results["students_by_rule"].items()]
    out += [Score.one(name, seed, b, sent=sent.get(name, {}).get("total"))
            for name, b in results["baselines"].items()]
    return out


def _dp_variants(fed_settings: dict[str, Any], report: dict[str, Any], tokenizer,
                 kind: str, weights: dict[str, Any], local: dict[str, Any],
                 epsilons: Sequence[float], delta: float, max_grad_norm: float,
                 with_fedavg: bool, privacy_report: dict[str, Any], meter, log):
    """The DP variants of fd and FedAvg (:func:`~fdcli.stages.dp_tradeoff.dp_tradeoff`),
    on DP-capable stand-ins for any architecture DP-SGD cannot train."""
    from .dp_tradeoff import dp_tradeoff, private_architectures

    configs, names = fed_settings["configs"], report["label_names"]
    swap = private_architectures(configs, [*fed_settings["architectures"],
                                           fed_settings["student"]], kind, names, tokenizer)
    settings = {**fed_settings, "architectures": [swap[a] for a in
                                                  fed_settings["architectures"]]}
    for original, used in swap.items():
        if original != used:
            log(f"DP: {original} has layers DP-SGD cannot train (BatchNorm); its DP variants "
                f"use a {used}")
    fedavg = {**weights, **local, "model_config": configs / f"{swap[fed_settings['student']]}"
              ".json", "report": report, "bits": 32} if with_fedavg else None
    attack = None
    if privacy_report:
        reference = fed_settings["root"] / "mia-reference"
        parts = fed_settings["parts"]

        def attack(model: Path, members: Path) -> dict[str, Any]:
            return _attacks(model, members, parts / "test", reference)
    return dp_tradeoff(fed_settings["root"] / "dp", settings, epsilons=epsilons, delta=delta,
                       max_grad_norm=max_grad_norm, fedavg=fedavg, attack=attack,
                       union=fed_settings["root"] / "union", meter=meter,
                       bundles=[fed_settings["root"] / "bundles" / f"client-{i}"
                                for i in range(len(fed_settings["sizes"]))],
                       teachers=fed_settings["architectures"], log=log)


def _write_configs(root: Path, parts: Path, kind: str, catalogue: dict[str, dict[str, Any]]):
    """Config files for the architectures (and, for text, a word tokenizer trained on the
    public proxy texts, whose size becomes each config's ``vocab_size``)."""
    import datasets

    from ..models import train_word_tokenizer

    configs = root / "configs"
    configs.mkdir()
    tokenizer, extra = None, {}
    if kind == "text":
        proxy = datasets.load_from_disk(str(parts / "proxy"))
        tokenizer = train_word_tokenizer(proxy["text"], root / "tokenizer")
        from transformers import AutoTokenizer

        extra = {"vocab_size": len(AutoTokenizer.from_pretrained(str(tokenizer)))}
    for name, cfg in catalogue.items():
        (configs / f"{name}.json").write_text(json.dumps({**cfg, **extra}, indent=2))
    return configs, tokenizer


def _privacy(root: Path, parts: Path, test: Path, union: Path, student_config: Path,
             specialists: Sequence[Path], student: Path, train: dict[str, Any],
             baselines: Sequence[str]) -> dict[str, Any]:
    """Loss-threshold and reference attacks on every specialist, the student and the
    baselines that trained on client data."""
    from .train_specialist import train_specialist

    reference = root / "mia-reference"
    train_specialist(parts / "proxy-labels", student_config, reference,
                     client_id="mia-reference", **train)
    out: dict[str, Any] = {
        "members": "each client's private training examples (all clients' for the student "
                   "and the baselines)",
        "nonmembers": "the global test split, weighted to the members' label mix",
        "reference_model": "the student architecture trained on the labelled proxy split, "
                           "which holds neither"}
    out["specialists"] = [
        {"client_id": f"client-{i}", **_attacks(model, parts / f"client-{i}", test, reference)}
        for i, model in enumerate(specialists)]
    aucs = [s["auc"] for s in out["specialists"]]
    out["specialists_mean_auc"] = sum(aucs) / len(aucs)
    out["student"] = _attacks(student, union, test, reference)
    for name in baselines:
        out[name] = _attacks(root / name, union, test, reference)
    return out


def _attacks(model: Path, members: Path, nonmembers: Path, reference: Path) -> dict[str, Any]:
    """Loss-threshold attack figures at the top level, the reference attack beside them."""
    from .evaluate import membership_inference

    found = membership_inference(model, members, nonmembers, references=[reference],
                                 match_labels=True)
    ref = {k: v for k, v in found["reference"].items() if k != "references"}
    return {**found["loss_threshold"], "reference": ref}


def _union(dirs: Sequence[Path], out: Path) -> Path:
    import datasets

    datasets.concatenate_datasets([datasets.load_from_disk(str(d)) for d in dirs]) \
        .save_to_disk(str(out))
    return out
