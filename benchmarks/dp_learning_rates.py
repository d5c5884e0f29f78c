"""Does a DP-SGD specialist of one digits institution learn at some learning rate?

One client's worth of scikit-learn's digits (``--examples``, about what a client of
``fd simulate --num-clients 10`` holds), the simulation's tiny ViT, DP-SGD (fdcli.dp) at
``--epsilon`` for each learning rate, against fd's ordinary training (the Trainer, no DP) at
the same learning rate in the same process; test accuracy on 497 held-out digits. Prints JSON.

    python benchmarks/dp_learning_rates.py --epsilon 8
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=125)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--epochs", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lrs", default="2e-3,1e-2,3e-2,1e-1")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import tempfile
    from pathlib import Path

    import torch

    from fdcli.dp import DPSettings, private_fit
    from fdcli.models import batch_inputs, load_classifier, predict_logits
    from fdcli.stages.simulate import ARCHITECTURES, digits_dataset
    from fdcli.training import fit

    ds = digits_dataset().shuffle(seed=0)
    train, test = ds.select(range(args.examples)), ds.select(range(1300, 1797))
    names = [str(i) for i in range(10)]
    config = Path(tempfile.mkdtemp()) / "vit.json"
    config.write_text(json.dumps(ARCHITECTURES["vit"]))

    def accuracy(clf) -> float:
        pred = predict_logits(clf, list(test["image"])).argmax(-1)
        return float((pred == torch.tensor(test["label"])).float().mean())

    runs = []
    for lr in [float(v) for v in args.lrs.split(",")]:
        row = {"learning_rate": lr}
        clf = load_classifier(config, "image", names, seed=0)
        started = time.perf_counter()
        fit(clf, list(train["image"]), list(train["label"]), epochs=args.epochs,
            learning_rate=lr, batch_size=args.batch_size, seed=0, progress=False)
        row |= {"no_dp_accuracy": accuracy(clf), "no_dp_s": time.perf_counter() - started}
        clf = load_classifier(config, "image", names, seed=0)
        started = time.perf_counter()
        _, guarantee = private_fit(clf.model, batch_inputs(clf, list(train["image"])),
                                   list(train["label"]), epochs=args.epochs,
                                   learning_rate=lr, batch_size=args.batch_size, seed=0,
                                   dp=DPSettings(args.epsilon), progress=False)
        row |= {"dp_accuracy": accuracy(clf), "dp_s": time.perf_counter() - started,
                "noise_multiplier": guarantee["noise_multiplier"],
                "epsilon_spent": guarantee["epsilon"]}
        runs.append(row)
    print(json.dumps({"examples": args.examples, "epsilon": args.epsilon,
                      "epochs": args.epochs, "batch_size": args.batch_size, "runs": runs},
                     indent=2))


if __name__ == "__main__":
    main()
