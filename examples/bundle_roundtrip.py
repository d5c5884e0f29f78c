"""Write a real logit bundle from a causal LM, then check and read it back.

    python examples/bundle_roundtrip.py [OUT_DIR]      # default: ./fd-example

No download and no data of your own: the "proxy dataset" is a few modules of the Python
standard library's own source (every machine has them), tokenised as UTF-8 bytes, and the
model is a tiny GPT-2 built from a config (random weights). What it writes is a real bundle:
`fd inspect OUT_DIR/bundle` and `fd verify OUT_DIR/bundle` work on it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from fdcli import TopKCodec, fingerprint_labels, read_bundle, verify_bundle
from fdcli.bundle import BundleWriter
from fdcli.models import fingerprint_model

MAX_LEN = 256


def proxy_documents() -> list[str]:
    import csv, json as js, textwrap  # noqa: E401 - modules whose source we read
    return [inspect.getsource(m) for m in (csv, js, textwrap)]


def main(out: Path) -> None:
    torch.manual_seed(0)
    docs = proxy_documents()
    proxy_fp = "sha256:" + hashlib.sha256(json.dumps(docs).encode()).hexdigest()
    vocab = [f"<0x{b:02X}>" for b in range(256)]  # byte-level vocabulary

    config = GPT2Config(vocab_size=256, n_positions=MAX_LEN, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    model_fp = fingerprint_model(model)

    bundle = out / "bundle"
    with BundleWriter(bundle, codec=TopKCodec(k=16), task="token", num_classes=256,
                      label_fingerprint=fingerprint_labels(vocab), proxy_fingerprint=proxy_fp,
                      client_id="example-institution", model_fingerprint=model_fp,
                      config={"model": "tiny GPT-2 (random init)", "max_length": MAX_LEN},
                      overwrite=True) as writer:
        with torch.no_grad():
            for i, doc in enumerate(docs):
                ids = torch.tensor(list(doc.encode("utf-8"))[:MAX_LEN])[None]
                logits = model(input_ids=ids).logits[0]  # [tokens, 256]
                writer.add([i], logits, row_counts=[logits.shape[0]])
    m = writer.manifest
    report = verify_bundle(bundle)
    first = next(read_bundle(bundle).iter_blocks()).sparse(temperature=2.0)
    size = sum(s.bytes for s in m.shards)
    print(json.dumps({
        "bundle": str(bundle), "verified": report.ok, "examples": m.examples, "rows": m.rows,
        "encoding": m.encoding, "stored_bytes": size, "bytes_per_token": round(size / m.rows, 2),
        "fidelity": m.fidelity, "first_row_top_ids_at_T2": first.ids[0, :5].tolist(),
    }, indent=2))
    print(f"\nNext: fd inspect {bundle}   and   fd verify {bundle}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "fd-example"))
