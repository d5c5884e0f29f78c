"""Other distillation settings for the student of an `fd simulate --task seq2seq` run, on the
same specialists, proxy and test files: one student per variant, scored like the simulation's
(BLEU, chrF, ROUGE-L and perplexity on the union of the domains' held-out files). Prints JSON.

    fd simulate --task seq2seq --out sim-s2s
    python benchmarks/seq2seq_variants.py sim-s2s [--variants topk_t2,sample8]

Variants: ``default`` (the simulation's student again: a check that the scores agree),
``topk_t2`` (the simulation's top-16 teacher at T = 2 instead of the T = 1 fd picks
for it), ``sample8`` (every specialist re-emits 8 sampled ids per target token; aggregated and
distilled at fd's defaults), ``hw0.25`` and ``hw0.75`` (top-16 at other text weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fdcli.stages.aggregate import aggregate  # noqa: E402
from fdcli.stages.seq2seq import (distill_seq2seq, emit_seq2seq_logits,  # noqa: E402
                                  evaluate_seq2seq)

VARIANTS = ("default", "topk_t2", "sample8", "hw0.25", "hw0.75")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sim", type=Path, help="an fd simulate --task seq2seq output folder")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    sim = args.sim
    res = json.loads((sim / "results.json").read_text())
    cfg = res["config"]
    lengths = dict(max_source_length=cfg["max_source_length"],
                   max_target_length=cfg["max_target_length"])
    train = dict(epochs=cfg["distill_epochs"], learning_rate=cfg["learning_rate"],
                 batch_size=cfg["batch_size"], seed=cfg["seed"], progress=False)
    student = sim / "configs" / f"{cfg['student']}.json"
    proxy, tok = sim / "data" / "proxy.jsonl", sim / "tokenizer"
    out = {"sim": str(sim), "reference": {
        name: res[name]["union"] for name in ("student", "proxy_only", "centralized")},
        "specialists_mean": res["specialists_mean"]["union"], "variants": {}}
    with tempfile.TemporaryDirectory(prefix="fd-s2s-variants-") as tmp:
        work = Path(tmp)
        union = work / "test-union.jsonl"
        union.write_text("".join(p.read_text() for p in sorted((sim / "data").glob("test-*"))))
        for name in [v for v in args.variants.split(",") if v]:
            t0 = time.perf_counter()
            teacher, options = sim / "teachers" / cfg["rule"], {}
            if name == "default":
                pass
            elif name == "topk_t2":
                options["temperature"] = 2.0
            elif name.startswith("hw"):
                options["hard_weight"] = float(name[2:])
            elif name == "sample8":
                bundles = []
                for i in range(cfg["num_clients"]):
                    bundles.append(work / f"sample8-{i}")
                    emit_seq2seq_logits(sim / "specialists" / f"client-{i}", proxy, bundles[-1],
                                        encoding="sample", draws=8, progress=False,
                                        client_id=f"client-{i}", **lengths)
                teacher = work / "sample8-teacher"
                aggregate(bundles, teacher, rule=cfg["rule"], k=cfg["k"], progress=False)
            else:
                raise SystemExit(f"unknown variant {name!r}; expected {VARIANTS}")
            distill_seq2seq(student, proxy, teacher, work / name, tokenizer=tok, **train,
                            **options)
            scores = evaluate_seq2seq(work / name, union, **lengths)
            out["variants"][name] = {
                **{k: round(scores[k], 2) for k in ("bleu", "chrf", "rouge_l")},
                "perplexity": round(scores["perplexity"], 3), "options": options,
                "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
