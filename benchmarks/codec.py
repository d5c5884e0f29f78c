"""Size, fidelity and speed of every bundle encoding, on real logits, against baselines.

    python benchmarks/codec.py            # full run (trains the LM teacher once, ~9 min on 2 cores)
    python benchmarks/codec.py --quick    # fewer rows

Prints one JSON object. Sources:
- ``token``: next-token logits of a small GPT-2 (8,192-id byte-level BPE) trained briefly on the
  Python standard library (benchmarks/lm_teacher.py), on held-out stdlib files. The teacher's
  held-out cross-entropy, the unigram entropy of the same text and its mean predictive entropy
  are reported beside the figures: a weak teacher repeats its top-k ids and flatters compression.
- ``class``: logits of an MLP classifier trained on scikit-learn's digits, on held-out digits.

Every row of ``results`` is measured by writing a real bundle with fdcli's writer and reading it
back with fdcli's checked reader, single-threaded (``torch.set_num_threads(1)``):
``bytes_per_row`` counts the shard files on disk, ``kl_vs_exact_nats`` is the writer's own
fidelity figure, ``decode_rows_per_s`` covers sha256 + bounded zstd + header and value checks +
reconstruction of the sparse rows, ``verify_rows_per_s`` runs ``verify_bundle``.
Baselines (``"baseline": true``) are written as plain zstd-compressed safetensors at the same
zstd level (``--zstd-level``, fd's default unless given): ``dense fp32``, ``dense fp16`` and ``topk fp16 + uint32 ids`` (roughly the
Megatron-LM logits saver: values in rank order, ids as uint32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import zstandard
from safetensors.torch import save as st_save

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fdcli.bundle import (BundleWriter, DenseCodec, LowRankCodec, SampleCodec,  # noqa: E402
                          TopKCodec, fingerprint_labels, read_bundle, verify_bundle)
from fdcli.bundle.shards import ZSTD_LEVEL  # noqa: E402

FP = "sha256:" + "0" * 64


def best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def mean_entropy(logits: torch.Tensor) -> float:
    total = 0.0
    for chunk in logits.split(4096):
        logp = torch.log_softmax(chunk.float(), -1)
        total += float(-(logp.exp() * logp).sum())
    return total / len(logits)


def measure(source: str, codec, logits: torch.Tensor, task: str, work: Path,
            batch: int, repeats: int, level: int) -> dict:
    rows, vocab = logits.shape
    path = work / f"{source}-{codec.name}"
    shutil.rmtree(path, ignore_errors=True)
    row_counts = None

    def encode():
        shutil.rmtree(path, ignore_errors=True)
        with BundleWriter(path, codec=codec, task=task, num_classes=vocab,
                          label_fingerprint=fingerprint_labels([str(i) for i in range(vocab)]),
                          proxy_fingerprint=FP, client_id="bench", model_fingerprint=FP,
                          zstd_level=level) as w:
            for start in range(0, rows, batch):
                chunk = logits[start:start + batch]
                ids = torch.arange(start, start + len(chunk))
                w.add(ids, chunk, row_counts=[1] * len(chunk) if task == "token" else row_counts)
        return w.manifest

    t0 = time.perf_counter()
    manifest = encode()
    encode_s = time.perf_counter() - t0
    on_disk = sum(s.bytes for s in manifest.shards)

    def decode():
        for block in read_bundle(path).iter_blocks():
            block.sparse()

    decode_s = best_time(decode, repeats)
    verify_s = best_time(lambda: verify_bundle(path), repeats)
    assert verify_bundle(path).ok
    out = {"source": source, "encoding": codec.name, **codec.params(), "rows": rows,
           "bytes_per_row": round(on_disk / rows, 3),
           "manifest_bytes": (path / "manifest.json").stat().st_size,
           "kl_vs_exact_nats": manifest.fidelity["mean_kl_nats"],
           "mean_tail_mass": manifest.fidelity["mean_tail_mass"],
           "encode_rows_per_s": round(rows / encode_s),
           "decode_rows_per_s": round(rows / decode_s),
           "verify_rows_per_s": round(rows / verify_s)}
    if manifest.fidelity.get("mean_truncation_kl_nats") is not None:
        out["truncation_kl_nats"] = manifest.fidelity["mean_truncation_kl_nats"]
    if codec.name == "sample":
        block = next(read_bundle(path).iter_blocks())
        out["mean_unique_ids"] = round(float((block.tensors["counts"] > 0).sum(-1)
                                             .float().mean()), 2)
    shutil.rmtree(path)
    return out


def baseline(source: str, name: str, tensors_of, logits: torch.Tensor, repeats: int,
             level: int) -> dict:
    rows = logits.shape[0]
    t0 = time.perf_counter()
    tensors = tensors_of(logits)
    blob = zstandard.ZstdCompressor(level=level).compress(st_save(tensors))
    encode_s = time.perf_counter() - t0
    from safetensors.torch import load as st_load

    decode_s = best_time(lambda: st_load(zstandard.ZstdDecompressor().decompress(blob)), repeats)
    raw = sum(t.numel() * t.element_size() for t in tensors.values())
    return {"source": source, "encoding": name, "baseline": True, "rows": rows,
            "bytes_per_row": round(len(blob) / rows, 3), "raw_bytes_per_row": raw / rows,
            "encode_rows_per_s": round(rows / encode_s),
            "decode_rows_per_s": round(rows / decode_s)}


def dense32(logits):
    return {"logp": torch.log_softmax(logits.float(), -1)}


def dense16(logits):
    return {"logp": torch.log_softmax(logits.float(), -1).half()}


def megatron_topk(k):
    def tensors(logits):
        vals, ids = torch.log_softmax(logits.float(), -1).topk(k, -1)
        return {"logp": vals.half(), "ids": ids.to(torch.int32)}
    return tensors


def token_source(rows: int, steps: int) -> tuple[torch.Tensor, dict]:
    from lm_teacher import load_teacher, teacher_logits

    torch.set_num_threads(os.cpu_count() or 1)
    model, held, info = load_teacher(steps=steps)
    logits = teacher_logits(model, held, rows)
    info = dict(info, mean_predictive_entropy_nats=round(mean_entropy(logits), 4),
                rows=rows)
    return logits, info


def class_source() -> tuple[torch.Tensor, dict]:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y))
    train, held = perm[:1200], perm[1200:]
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(x[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model(x)
        ce = float(torch.nn.functional.cross_entropy(logits[held], y[held]))
        acc = float((logits[held].argmax(-1) == y[held]).float().mean())
    return logits, {"dataset": "sklearn digits", "classes": 10, "rows": len(y),
                    "held_out_ce_nats": round(ce, 4), "held_out_accuracy": round(acc, 4),
                    "mean_predictive_entropy_nats": round(mean_entropy(logits), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows, fewer repeats")
    ap.add_argument("--token-rows", type=int, default=None)
    ap.add_argument("--zstd-level", type=int, default=ZSTD_LEVEL,
                    help="zstd level for fd's bundles and the baselines alike")
    ap.add_argument("--teacher-steps", type=int, default=600,
                    help="training steps of the LM teacher: more steps, a sharper teacher")
    args = ap.parse_args()
    token_rows = args.token_rows or (8192 if args.quick else 65536)
    repeats = 2 if args.quick else 5
    lvl = args.zstd_level
    results = []
    tok, tok_info = token_source(token_rows, args.teacher_steps)
    cls, cls_info = class_source()
    torch.set_num_threads(1)  # every speed below is one core
    work = Path(tempfile.mkdtemp(prefix="fd-codec-bench-"))
    try:
        dense_rows = min(token_rows, 2048)
        for k in (1, 4, 16, 64):
            results.append(measure("token", TopKCodec(k=k), tok, "token", work, 4096, repeats, lvl))
        results.append(measure("token", TopKCodec(k=16, value_dtype="fp16"), tok, "token", work,
                               4096, repeats, lvl))
        results.append(measure("token", SampleCodec(draws=16), tok, "token", work, 4096,
                               repeats, lvl))
        results.append(measure("token", DenseCodec(), tok[:dense_rows], "token", work, 512, 2, lvl))
        results.append(measure("token", LowRankCodec(rank=64), tok[:dense_rows], "token", work,
                               dense_rows, 2, lvl))
        results.append(baseline("token", "dense fp32", dense32, tok[:dense_rows], 2, lvl))
        results.append(baseline("token", "dense fp16", dense16, tok[:dense_rows], 2, lvl))
        results.append(baseline("token", "topk fp16 + uint32 ids", megatron_topk(16), tok,
                                repeats, lvl) | {"k": 16})
        for codec in (DenseCodec(), TopKCodec(k=3), TopKCodec(k=3, value_dtype="fp16"),
                      SampleCodec(draws=16), LowRankCodec(rank=4)):
            results.append(measure("class", codec, cls, "classification", work, 4096,
                                   repeats, lvl))
        results.append(baseline("class", "dense fp32", dense32, cls, repeats, lvl))
        results.append(baseline("class", "dense fp16", dense16, cls, repeats, lvl))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"benchmark": "codec", "zstd_level": lvl, "threads": 1,
                      "teachers": {"token": tok_info, "class": cls_info},
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
