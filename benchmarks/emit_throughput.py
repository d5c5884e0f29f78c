"""Emit throughput against the model's own forward pass, at the same dtype, in one process.

A GPT-2-small-shaped teacher (12 layers x 768 by default) is built from a config, with a
byte-level BPE tokenizer (32,768 ids by default) trained here on the Python standard library's
source, which also supplies the proxy text: nothing is downloaded. For each dtype the script
times, interleaved over ``--repeats`` rounds on the same token blocks:

- ``forward``: the model's forward pass alone (logits cut to the tokenizer's size, nothing
  else), the ceiling for any emit;
- ``emit_topk`` and ``emit_sample``: fd's emit loop writing a real bundle (encode, copy to the
  host, fidelity, compress, write, manifest), model load and tokenization excluded (they are
  timed once, as ``setup_s``).

It prints JSON: tokens/s of each and ``emit / forward`` ratios. Runs on CPU, and on the GPU when
one is present (``--device``). On code that predates the pipelined emit (no
``fdcli.stages.lm.write_token_rows``) it times the loop that code's ``emit_token_logits`` ran,
so the same script measures main as the baseline.

    python benchmarks/emit_throughput.py --tokens 8192 --dtypes fp32          # 2-core CPU
    python benchmarks/emit_throughput.py --tokens 1000000 --dtypes fp32,bf16  # a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_teacher import DEFAULT_CACHE, _read, stdlib_files  # noqa: E402

from fdcli.lm import load_lm, pad_blocks, text_blocks, token_logits, vocab_fingerprint  # noqa: E402
try:  # the input path fd's emit uses (pinned, non-blocking); main copied synchronously
    from fdcli.lm import to_device  # noqa: E402
except ImportError:
    def to_device(batch, device):
        return {k: v.to(device) for k, v in batch.items()}
from fdcli.stages import lm as stages_lm  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare(cache: Path, vocab: int, chars: int) -> tuple[Path, Path]:
    """A tokenizer folder (trained once, cached) and a JSONL proxy file of stdlib sources."""
    tok_dir = cache / f"bpe{vocab}"
    texts = _read(stdlib_files(), chars)
    if not (tok_dir / "tokenizer.json").exists():
        from fdcli.lm import train_bpe_tokenizer

        train_bpe_tokenizer(_read(stdlib_files(), 12_000_000), tok_dir, vocab_size=vocab)
    proxy = cache / f"proxy_{chars}.jsonl"
    if not proxy.exists():
        with open(proxy, "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
    return tok_dir, proxy


def model_config(path: Path, layers: int, width: int, seq: int) -> Path:
    path.write_text(json.dumps({"model_type": "gpt2", "n_layer": layers, "n_embd": width,
                                "n_head": max(1, width // 64), "n_positions": seq}))
    return path


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_forward(lm, blocks, batch_size: int, device: str) -> float:
    lm.model.eval()
    pad = lm.tokenizer.pad_token_id or 0
    sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(blocks), batch_size):
        batch = pad_blocks(blocks[start:start + batch_size], pad)
        token_logits(lm.model, to_device(batch, torch.device(device)), lm.vocab_size)
    sync(device)
    return time.perf_counter() - t0


def _main_loop(lm, tb, writer, batch_size):
    """The emit loop of code without ``write_token_rows`` (main before issue 12)."""
    from fdcli.lm import iter_token_logits

    for index, logits, counts, _ in iter_token_logits(lm, tb.blocks, batch_size):
        writer.add(index, logits, row_counts=counts)


def time_emit(lm, tb, out: Path, codec, batch_size: int, device: str) -> tuple[float, dict]:
    from fdcli.bundle import BundleWriter

    write_rows = getattr(stages_lm, "write_token_rows", None)
    shutil.rmtree(out, ignore_errors=True)
    sync(device)
    t0 = time.perf_counter()
    with BundleWriter(out, codec=codec, task="token", num_classes=lm.vocab_size,
                      label_fingerprint=vocab_fingerprint(lm.tokenizer),
                      proxy_fingerprint=tb.fingerprint, client_id="bench",
                      model_fingerprint="sha256:bench") as writer:
        if write_rows is not None:
            write_rows(lm, tb.blocks, writer, batch_size)
        else:
            _main_loop(lm, tb, writer, batch_size)
    sync(device)
    elapsed = time.perf_counter() - t0
    m = writer.manifest
    return elapsed, {"bytes": sum(s.bytes for s in m.shards), "rows": m.rows,
                     "mean_tail_mass": m.fidelity.get("mean_tail_mass")}


def profile(lm, tb, out: Path, codec, batch_size: int, device: str, title: str) -> None:
    from torch.profiler import ProfilerActivity, profile as run

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda")
                                     else [])
    with run(activities=acts) as prof:
        time_emit(lm, tb, out, codec, batch_size, device)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    print(f"== profile: {title}", file=sys.stderr)
    print(prof.key_averages().table(sort_by=key, row_limit=18), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192, help="proxy tokens to emit")
    ap.add_argument("--dtypes", default="fp32", help="comma-separated: fp32,bf16,fp16")
    ap.add_argument("--encodings", default="topk,sample")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--profile", action="store_true",
                    help="also print (stderr) the busiest kernels of one emit per encoding")
    args = ap.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # about 3.3 characters per token for Python source under a 32k BPE; enough text for the
    # requested tokens
    tok_dir, proxy = prepare(args.cache, args.vocab, max(200_000, args.tokens * 5))
    work = Path(tempfile.mkdtemp(prefix="fd-emit-bench-"))
    cfg = model_config(work / "teacher.json", args.layers, args.width, args.seq)
    from fdcli.bundle import SampleCodec, TopKCodec
    from fdcli.data import load_local

    codecs = {"topk": TopKCodec(k=args.k), "sample": SampleCodec(draws=args.draws)}
    results: dict = {"device": args.device, "torch": torch.__version__,
                     "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                     "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda")
                     else None,
                     "shape": {"layers": args.layers, "width": args.width, "vocab": args.vocab,
                               "seq": args.seq, "batch_size": args.batch_size,
                               "k": args.k, "draws": args.draws},
                     "pipelined": hasattr(stages_lm, "write_token_rows"), "runs": {}}
    try:
        lm = load_lm(cfg, tokenizer=tok_dir)
        ds = load_local(proxy)
        tb = text_blocks(ds, str(proxy), lm.tokenizer, max_length=args.seq)
        keep, total = [], 0
        for b in tb.blocks:
            if total >= args.tokens:
                break
            keep.append(b)
            total += len(b)
        tb.blocks = keep
        results["tokens"] = total
        results["setup_s"] = round(time.perf_counter() - t0, 2)
        for name in args.dtypes.split(","):
            lm.model.to(args.device, DTYPES[name])
            time_forward(lm, tb.blocks[:args.batch_size], args.batch_size, args.device)  # warm
            few = dataclasses.replace(tb, blocks=tb.blocks[:4 * args.batch_size])
            for enc in args.encodings.split(","):  # warm: compile the encoders at this dtype
                time_emit(lm, few, work / "warm", codecs[enc], args.batch_size, args.device)
                if args.profile:
                    profile(lm, few, work / "warm", codecs[enc], args.batch_size, args.device,
                            f"{name} {enc}")
            times: dict[str, list[float]] = {"forward": []}
            info = {}
            for _ in range(args.repeats):
                times["forward"].append(time_forward(lm, tb.blocks, args.batch_size,
                                                     args.device))
                for enc in args.encodings.split(","):
                    s, info[enc] = time_emit(lm, tb, work / "bundle", codecs[enc],
                                             args.batch_size, args.device)
                    times.setdefault(f"emit_{enc}", []).append(s)
            best = {k: min(v) for k, v in times.items()}
            run = {k: {"seconds": [round(x, 3) for x in v],
                       "tokens_per_s": round(total / best[k])} for k, v in times.items()}
            for enc in args.encodings.split(","):
                run[f"emit_{enc}"].update(info[enc])
                run[f"emit_{enc}"]["bytes_per_token"] = round(info[enc]["bytes"] / total, 2)
                run[f"emit_{enc}"]["vs_forward"] = round(best["forward"] / best[f"emit_{enc}"], 3)
            results["runs"][name] = run
            print(json.dumps({name: run}), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
