"""fd simulate: a whole federation on one machine, with real artifacts on disk.

It partitions a labelled dataset (scikit-learn's bundled digits by default, so no download),
trains one specialist per client (mixed architectures: tiny ViTs and tiny ResNets), emits
their bundles on the proxy split, aggregates them, distills a student, trains the student's
architecture on the union of the client data as the centralized reference, and evaluates
everything on the global test split that no client saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..outputs import fresh_dir

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


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def simulate(out: str | Path, *, data: str | Path | None = None, num_clients: int = 5,
             alpha: float = 1.0, proxy_fraction: float = 0.2, rule: str = "confidence",
             compare_rules: Sequence[str] = ("mean",),
             architectures: Sequence[str] = ("vit", "resnet"), student: str = "resnet",
             epochs: float = 60.0, distill_epochs: float = 100.0, learning_rate: float = 2e-3,
             batch_size: int = 32, temperature: float = 2.0, seed: int = 0,
             overwrite: bool = False, progress: bool = True, log=print) -> dict[str, Any]:
    """Run the federation and write ``out/results.json``; returns the results.

    The defaults suit tiny models trained from scratch (60 epochs, 100 for distillation, at a
    learning rate of 2e-3);
    the stage defaults (3 epochs, 5e-5) suit fine-tuning pretrained models.
    """
    from ..stages.aggregate import aggregate
    from ..stages.distill import distill
    from ..stages.emit import emit_logits
    from ..stages.evaluate import evaluate
    from ..stages.partition import partition
    from ..stages.train_specialist import train_specialist

    unknown = [a for a in [*architectures, student] if a not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; expected {sorted(ARCHITECTURES)}")
    config = {"data": str(data) if data else "sklearn digits", "num_clients": num_clients,
              "alpha": alpha, "proxy_fraction": proxy_fraction, "rule": rule, "compare_rules": list(compare_rules),
              "architectures": list(architectures), "student": student, "epochs": epochs,
              "distill_epochs": distill_epochs, "learning_rate": learning_rate,
              "batch_size": batch_size, "temperature": temperature, "seed": seed}
    timing: dict[str, float] = {}
    train = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                 progress=progress)
    with fresh_dir(out, overwrite) as root:
        t = time.perf_counter()
        parts = root / "partition"
        report = partition(data or "sklearn-digits", parts, num_clients=num_clients,
                           alpha=alpha, proxy_fraction=proxy_fraction, seed=seed,
                           dataset=None if data else digits_dataset())
        timing["partition_s"] = time.perf_counter() - t
        configs = root / "configs"
        configs.mkdir()
        for name, cfg in ARCHITECTURES.items():
            (configs / f"{name}.json").write_text(json.dumps(cfg, indent=2))
        test = parts / "test"
        specialists, uploads = [], []
        t = time.perf_counter()
        for i in range(num_clients):
            arch = architectures[i % len(architectures)]
            model_dir = root / "specialists" / f"client-{i}"
            log(f"client {i}: training a {arch} on {report['sizes']['clients'][i]} examples")
            train_specialist(parts / f"client-{i}", configs / f"{arch}.json", model_dir,
                             client_id=f"client-{i}", **train)
            bundle = root / "bundles" / f"client-{i}"
            emit_logits(model_dir, parts / "proxy", bundle, client_id=f"client-{i}", seed=seed,
                        progress=progress)
            uploads.append(_dir_bytes(bundle))
            scores = evaluate(model_dir, test)
            specialists.append({"client_id": f"client-{i}", "architecture": arch,
                                "train_examples": report["sizes"]["clients"][i],
                                "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
                                "uploaded_bytes": uploads[-1]})
        timing["specialists_s"] = time.perf_counter() - t
        bundles = [root / "bundles" / f"client-{i}" for i in range(num_clients)]
        students: dict[str, dict[str, Any]] = {}
        t = time.perf_counter()
        for r in [rule, *[c for c in compare_rules if c != rule]]:
            log(f"aggregating with rule {r!r} and distilling a {student}")
            teacher = root / "teachers" / r
            aggregate(bundles, teacher, rule=r, seed=seed, progress=progress)
            student_dir = root / "students" / r
            distill(configs / f"{student}.json", parts / "proxy", teacher, student_dir,
                    temperature=temperature, epochs=distill_epochs,
                    learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                    progress=progress)
            scores = evaluate(student_dir, test)
            students[r] = {"architecture": student, "accuracy": scores["accuracy"],
                           "macro_f1": scores["macro_f1"], "nll": scores["nll"],
                           "ece": scores["ece"]}
        timing["aggregate_distill_s"] = time.perf_counter() - t
        t = time.perf_counter()
        log(f"centralized reference: a {student} on the union of the client data")
        union = _union([parts / f"client-{i}" for i in range(num_clients)], root / "union")
        central = root / "centralized"
        train_specialist(union, configs / f"{student}.json", central, client_id="centralized",
                         **train)
        c_scores = evaluate(central, test)
        timing["centralized_s"] = time.perf_counter() - t
        t = time.perf_counter()
        log("membership inference: specialists, the student and centralized")
        reference = root / "mia-reference"
        train_specialist(parts / "proxy-labels", configs / f"{student}.json", reference,
                         client_id="mia-reference", **train)
        privacy = {"members": "each client's private training examples (all clients' for the "
                              "student and centralized)", "nonmembers": "the global test split",
                   "reference_model": "the student architecture trained on the labelled "
                                      "proxy split, which holds neither"}
        privacy["specialists"] = [
            {"client_id": f"client-{i}", **_attacks(root / "specialists" / f"client-{i}",
                                                    parts / f"client-{i}", test, reference)}
            for i in range(num_clients)]
        privacy["student"] = _attacks(root / "students" / rule, union, test, reference)
        privacy["centralized"] = _attacks(central, union, test, reference)
        timing["privacy_s"] = time.perf_counter() - t
        best = max(specialists, key=lambda s: s["accuracy"])
        results = {
            "fd_version": __version__, "config": config,
            "partition": {"sizes": report["sizes"],
                          "client_label_histograms": report["client_label_histograms"]},
            "specialists": specialists,
            "student": students[rule],
            "students_by_rule": students,
            "centralized": {"architecture": student, "accuracy": c_scores["accuracy"],
                            "macro_f1": c_scores["macro_f1"]},
            "best_specialist_accuracy": best["accuracy"],
            "privacy": privacy,
            "bytes": {"uploaded_per_client": uploads, "uploaded_total": sum(uploads),
                      "downloaded_per_client": 0},
            "timing": {k: round(v, 2) for k, v in timing.items()},
        }
        (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _attacks(model: Path, members: Path, nonmembers: Path, reference: Path) -> dict[str, Any]:
    """Loss-threshold attack figures at the top level, the reference attack beside them."""
    from .evaluate import membership_inference

    found = membership_inference(model, members, nonmembers, references=[reference])
    ref = {k: v for k, v in found["reference"].items() if k != "references"}
    return {**found["loss_threshold"], "reference": ref}


def _union(dirs: Sequence[Path], out: Path) -> Path:
    import datasets

    datasets.concatenate_datasets([datasets.load_from_disk(str(d)) for d in dirs]) \
        .save_to_disk(str(out))
    return out
