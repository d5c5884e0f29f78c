"""Relational students under other settings, on the specialists of a finished
``fd simulate --task embedding`` run: emission temperature, anchors kept (k), aggregation rule
and anchor bank. Each variant re-emits the specialists' relational bundles, aggregates them,
distills a student of the run's architecture and probes it on the test split exactly as the
simulation does (linear probe and k-NN fitted on the labelled proxy). Prints JSON::

    fd simulate --task embedding --out sim-emb
    python benchmarks/relational_variants.py sim-emb --variants "temperature=0.05" "rule=mean"
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

DEFAULTS = {"temperature": 0.1, "k": 16, "rule": "confidence", "bank": "epoch"}


def parse(variant: str) -> dict:
    out = dict(DEFAULTS)
    for item in filter(None, variant.split(",")):
        key, value = item.split("=")
        if key not in DEFAULTS:
            raise SystemExit(f"unknown setting {key!r}; expected some of {sorted(DEFAULTS)}")
        out[key] = type(DEFAULTS[key])(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path, help="a finished fd simulate --task embedding folder")
    parser.add_argument("--variants", nargs="+", default=[""],
                        help="comma-separated settings, e.g. temperature=0.05,k=64 ('' for "
                             "the defaults)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    from fdcli.stages.aggregate import aggregate
    from fdcli.stages.embedding import distill_embedding, emit_embedding_logits
    from fdcli.stages.simulate_embedding import _probe_all

    results = json.loads((args.sim / "results.json").read_text())
    c = results["config"]
    fed = args.sim / "federation"
    parts, tokenizer = fed / "partition", (fed / "tokenizer" if c["kind"] == "text" else None)
    specialists = [fed / "specialists" / f"client-{i}" for i in range(c["num_clients"])]
    work = args.work or args.sim / "variants"
    out = {"sim": str(args.sim), "config": c, "variants": []}
    for variant in args.variants:
        s = parse(variant)
        name = ",".join(f"{k}={v}" for k, v in s.items())
        root = work / name.replace("=", "-").replace(",", "_")
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        bundles = [root / "bundles" / f"client-{i}" for i in range(len(specialists))]
        for spec, bundle in zip(specialists, bundles):
            emit_embedding_logits(spec, parts / "proxy", bundle, anchors=c["anchors"],
                                  temperature=s["temperature"], pooling=c["pooling"],
                                  k=s["k"], seed=c["seed"], progress=False)
        aggregate(bundles, root / "teacher", rule=s["rule"], k=s["k"], progress=False)
        distill_embedding(fed / "configs" / f"{c['student']}.json", parts / "proxy",
                          root / "teacher", root / "student", bank=s["bank"],
                          epochs=c["distill_epochs"], learning_rate=c["learning_rate"],
                          batch_size=c["batch_size"], seed=c["seed"], tokenizer=tokenizer,
                          progress=False)
        probe = _probe_all({"student": root / "student"}, parts, specialists,
                           pooling=c["pooling"], neighbours=c["neighbours"],
                           tokenizer=tokenizer)["student"]
        out["variants"].append({"settings": s, **probe,
                                "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(out["variants"][-1]), flush=True)
    out["label_logit_student"] = results["probes"]["label_logit_student"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
