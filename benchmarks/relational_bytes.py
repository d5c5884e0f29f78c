"""Bytes per proxy example of relational bundles: k anchors kept out of N, against the dense
encoding of the same relations. The proxy is standard-library source cut into snippets
(benchmarks/stdlib_snippets.py), so that N = 4,096 anchors fit; the encoder is ``--model``
(a text model folder, e.g. a specialist of ``fd simulate --task embedding --data
snippets.csv``) or a random-init tiny BERT. Prints JSON::

    python benchmarks/relational_bytes.py --model sim-text/federation/specialists/client-0 \\
        --tokenizer sim-text/federation/tokenizer
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--anchors", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--dense", action="store_true", help="also the dense encoding")
    args = parser.parse_args()

    import sysconfig

    from fdcli.models import train_word_tokenizer
    from fdcli.stages.embedding import emit_embedding_logits
    from stdlib_snippets import PACKAGES, snippets

    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [s for p in PACKAGES for s in snippets(root / p, 3)][:args.examples]
    with tempfile.TemporaryDirectory(prefix="fd-relbytes-") as work:
        work = Path(work)
        proxy = work / "proxy.csv"
        with proxy.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text"])
            w.writerows([t] for t in texts)
        model, tokenizer = args.model, args.tokenizer
        if model is None:
            tokenizer = train_word_tokenizer(texts, work / "tokenizer")
            model = work / "bert.json"
            model.write_text(json.dumps({
                "model_type": "bert", "vocab_size": 5000, "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                "max_position_embeddings": 128}))
        out = {"proxy_examples": len(texts), "model": str(args.model or "random-init bert"),
               "runs": []}
        for n in args.anchors:
            encodings = [("topk", k) for k in args.ks] + ([("dense", None)] if args.dense
                                                          else [])
            for encoding, k in encodings:
                t0 = time.perf_counter()
                bundle = work / f"b-{n}-{encoding}-{k}"
                m = emit_embedding_logits(model, proxy, bundle, anchors=n, encoding=encoding,
                                          k=k or 16, tokenizer=tokenizer, progress=False)
                size = sum(s.bytes for s in m.shards)
                run = {"anchors": n, "encoding": encoding, "k": k, "bytes": size,
                       "bytes_per_example": size / m.examples,
                       "raw_bytes_per_example": sum(s.raw_bytes for s in m.shards) / m.examples,
                       "seconds": round(time.perf_counter() - t0, 2), **m.fidelity}
                out["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
