"""Token-level distillation: what each teacher encoding costs on disk and buys in the student.

One shared teacher (benchmarks/lm_teacher.py: a GPT-2 trained on the Python standard library)
scores a proxy set of held-out token windows. Its distributions are written as real bundles
(BundleWriter, read back with read_bundle and decoded a batch at a time by TeacherRows, the path
``fd distill`` takes), and one student per setting is trained for the same steps from the same
initialisation, in the same data order:

    ce_only     next-token cross-entropy on the proxy tokens (no teacher)
    dense_kd    full KL against the teacher's dense distributions (kept in memory, fp16)
    topk_kd     tail-bucket KD against top-k bundles, k in {1, 4, 16, 64} (int8 values)
    sample_kd   the sampled-target loss against importance-sampled ids (``--draws`` per token)

Each row reports bytes_per_token (shards and manifest on disk), student_ppl on held-out windows
the proxy does not contain, step_time_ratio_vs_ce (median step time including the teacher
decode, over the ce_only median) and peak_rss_mb (VmHWM, reset before each student). The
``emit`` object times the teacher's forward pass against the encoding and writing of a top-16
bundle for the same windows (``emit_overhead``), also for a wider random-init model, since the
encoding cost scales with the vocabulary and the forward pass with the model.

    python benchmarks/lm_distill.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/lm_distill.py --quick    # small teacher and students, under a minute

The realistic regime (issue 13: each proxy token seen about once, a proxy of 1M+ tokens):
``--one-pass`` trains every student for exactly one pass over the proxy in a random order,
computes the dense teacher on the fly (a stored ``[tokens, V]`` tensor would not fit), and
streams the bundles from the teacher; ``--proxy-source transformers`` takes the proxy from the
installed ``transformers`` package's Python source (public code the teacher never saw; the
standard library's held-out files hold only about 0.4M tokens), while the students are still
scored on held-out standard-library windows.

    python benchmarks/lm_distill.py --one-pass --proxy-source transformers \
        --proxy-windows 8192 --ks 4,16,64 --draws 16,24 --only dense_kd,topk_kd,sample_kd
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm_teacher import DEFAULT_CACHE, load_teacher  # noqa: E402

from fdcli.bundle import (BundleWriter, DenseCodec, SampleCodec, TopKCodec,  # noqa: E402
                          fingerprint_labels, read_bundle)
from fdcli.losses import dense_kd_loss, sparse_kd_loss  # noqa: E402
from fdcli.bundle import TeacherRows  # noqa: E402

FULL = dict(teacher=dict(steps=600), seq=128, proxy_windows=256, eval_windows=128, steps=200,
            batch=8, student=dict(n_embd=96, n_layer=2, n_head=4), lr=2e-3,
            wide=dict(n_embd=768, n_layer=12, n_head=12), wide_windows=8)
QUICK = dict(teacher=dict(steps=150, vocab=2048, n_embd=64, seq=64, train_chars=1_500_000),
             seq=64, proxy_windows=48, eval_windows=32, steps=30, batch=8,
             student=dict(n_embd=48, n_layer=1, n_head=4), lr=3e-3,
             wide=dict(n_embd=256, n_layer=4, n_head=8), wide_windows=4)


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) for this process, where Linux allows."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def forward_logits(model, windows: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([model(input_ids=w).logits.float() for w in windows.split(batch)])


def write_bundle(path: Path, codec, logits, vocab: int) -> int:
    """Write the teacher's logits ``[windows, seq, V]`` as a token bundle; bytes on disk.
    ``logits`` may also be ``(model, windows)``: the teacher is then run 32 windows at a
    time, so no ``[tokens, V]`` tensor is built."""
    model, windows = logits if isinstance(logits, tuple) else (None, None)
    n, seq = (windows.shape if model is not None else logits.shape[:2])
    with BundleWriter(path, codec=codec, task="token", num_classes=vocab,
                      label_fingerprint=fingerprint_labels([str(i) for i in range(vocab)]),
                      proxy_fingerprint="sha256:" + "0" * 64, client_id="teacher",
                      model_fingerprint="sha256:" + "1" * 64) as w:
        for start in range(0, n, 32):
            chunk = forward_logits(model, windows[start:start + 32]) if model is not None \
                else logits[start:start + 32]
            w.add(range(start, start + len(chunk)), chunk.reshape(-1, vocab),
                  row_counts=[seq] * len(chunk))
    return sum(f.stat().st_size for f in path.iterdir())


def external_windows(tokenizer_dir: Path, n: int, seq: int) -> torch.Tensor:
    """``n`` windows of ``seq`` tokens from the installed transformers package's .py files
    (sorted; documents joined by the end-of-text token), in the teacher's tokenizer."""
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids: list[int] = []
    for p in sorted(Path(transformers.__file__).parent.rglob("*.py")):
        ids.extend(tok(p.read_text(encoding="utf-8", errors="replace"), verbose=False)
                   ["input_ids"] + [tok.eos_token_id])
        if len(ids) >= n * seq:
            return torch.tensor(ids[: n * seq]).view(n, seq)
    raise SystemExit(f"transformers' source holds {len(ids)} tokens; need {n * seq}")


def make_student(config: dict, vocab: int, seq: int, seed: int = 1):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=seq, **config))


@torch.no_grad()
def perplexity(model, windows: torch.Tensor) -> float:
    model.eval()
    nll, count = 0.0, 0
    for w in windows.split(16):
        logits = model(input_ids=w).logits[:, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       w[:, 1:].reshape(-1), reduction="sum"))
        count += w[:, 1:].numel()
    return math.exp(nll / count)


def batch_order(cfg: dict, n: int) -> list[torch.Tensor]:
    """The windows of every step: drawn with replacement, or with ``one_pass`` a random
    permutation cut into batches (each proxy token seen exactly once)."""
    gen = torch.Generator().manual_seed(0)
    if cfg.get("one_pass"):
        return list(torch.randperm(n, generator=gen).split(cfg["batch"]))
    return [torch.randint(0, n, (cfg["batch"],), generator=gen) for _ in range(cfg["steps"])]


def train_student(name: str, cfg: dict, vocab: int, proxy: torch.Tensor, eval_w: torch.Tensor,
                  temperature: float, dense=None,
                  teacher: TeacherRows | None = None, hard_weight: float = 0.0) -> dict:
    """Same init, order, optimiser and steps for every student; the loss differs. ``dense``
    is the teacher's logits ``[windows, seq, V]``, or the teacher model itself (run on each
    batch)."""
    model = make_student(cfg["student"], vocab, cfg["seq"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    times = []
    peak_rss_reset()
    model.train()
    for idx in batch_order(cfg, len(proxy)):
        t0 = time.perf_counter()
        x = proxy[idx]
        logits = model(input_ids=x).logits.reshape(-1, vocab)
        if isinstance(dense, torch.nn.Module):
            with torch.no_grad():
                t = torch.log_softmax(dense(input_ids=x).logits.float().reshape(-1, vocab)
                                      / temperature, -1)
            loss = dense_kd_loss(logits, t, temperature)
        elif dense is not None:
            t = torch.log_softmax(dense[idx].float().reshape(-1, vocab) / temperature, -1)
            loss = dense_kd_loss(logits, t, temperature)
        elif teacher is not None:
            b = teacher.batch(idx.tolist())
            loss = sparse_kd_loss(logits, b["fd_ids"], b["fd_logp"], b["fd_tail"], temperature)
        if dense is None and teacher is None or hard_weight > 0:
            # next-token CE on every position that has a next token
            ce = torch.nn.functional.cross_entropy(
                logits.view(len(x), -1, vocab)[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
            loss = ce if dense is None and teacher is None else \
                (1 - hard_weight) * loss + hard_weight * ce
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    steady = times[min(3, len(times) - 1):]
    return {"name": name, "student_ppl": round(perplexity(model, eval_w), 3),
            "step_s": statistics.median(steady), "peak_rss_mb": round(peak_rss_mb(), 1),
            "final_loss": round(float(loss.detach()), 4)}


def emit_overhead(model, windows: torch.Tensor, vocab: int, work: Path, name: str,
                  repeats: int = 3) -> dict:
    """Seconds of teacher forward pass vs encoding + compressing + writing a top-16 bundle."""
    fwd, enc = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        logits = forward_logits(model, windows).view(len(windows), windows.shape[1], vocab)
        fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        write_bundle(work / f"emit-{name}-{r}", TopKCodec(16), logits, vocab)
        enc.append(time.perf_counter() - t0)
    f, e = statistics.median(fwd), statistics.median(enc)
    return {"model": name, "tokens": windows.numel(), "forward_s": round(f, 4),
            "encode_write_s": round(e, 4), "emit_overhead": round(e / f, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings, under a minute")
    ap.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    ap.add_argument("--draws", default="16", help="sample_kd: draws per token (a comma list "
                                                  "runs one student per value)")
    ap.add_argument("--ks", default="1,4,16,64", help="topk_kd: the k values, comma-separated")
    ap.add_argument("--one-pass", action="store_true",
                    help="one pass over the proxy per student (each token seen once); dense "
                         "teacher computed on the fly")
    ap.add_argument("--proxy-source", choices=("held", "transformers"), default="held",
                    help="proxy windows from the teacher's held-out standard-library text, or "
                         "from the installed transformers package's source")
    ap.add_argument("--hard-weight", type=float, default=0.0,
                    help="share of next-token CE mixed into every KD student's loss")
    ap.add_argument("--only", default="", help="comma-separated names to run (ce_only always "
                                               "runs, as the step-time reference)")
    ap.add_argument("--teacher-steps", type=int, default=None)
    ap.add_argument("--proxy-windows", type=int, default=None,
                    help="proxy size in windows (default: 256, or 48 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per student")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("proxy_windows", "steps"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    tcfg = dict(cfg["teacher"])
    if args.teacher_steps:
        tcfg["steps"] = args.teacher_steps
    torch.manual_seed(0)
    t_start = time.perf_counter()
    cache = args.cache / "quick" if args.quick else args.cache
    teacher, held, info = load_teacher(cache, **tcfg)
    teacher = teacher.cpu().eval()
    vocab, seq = teacher.config.vocab_size, cfg["seq"]
    n_proxy, n_eval = cfg["proxy_windows"], cfg["eval_windows"]
    n_held = n_eval if args.proxy_source == "transformers" else n_proxy + n_eval
    windows = held[: n_held * seq].view(-1, seq)
    if len(windows) < n_held:
        raise SystemExit(f"held-out text has {len(windows)} windows; need {n_held}")
    if args.proxy_source == "transformers":
        proxy, eval_w = external_windows(cache / "teacher", n_proxy, seq), windows
    else:
        proxy, eval_w = windows[:n_proxy], windows[n_proxy:]
    cfg["one_pass"] = args.one_pass
    if args.one_pass:
        cfg["steps"] = math.ceil(n_proxy / cfg["batch"])
    draws = [int(d) for d in str(args.draws).split(",")]
    # the dense baseline: [windows, seq, V] in memory, or the teacher itself run per batch
    dense = teacher if args.one_pass else forward_logits(teacher, proxy).half()
    source = (teacher, proxy) if args.one_pass else dense.float()
    out = {"teacher": {k: info.get(k) for k in ("vocab_size", "steps", "n_embd",
                                                "held_out_ce_nats", "held_out_ppl")},
           "teacher_proxy_ppl": round(perplexity(teacher, proxy), 3),
           "teacher_eval_ppl": round(perplexity(teacher, eval_w), 3),
           "settings": {"quick": args.quick, "temperature": args.temperature,
                        "draws": draws, "hard_weight": args.hard_weight,
                        "one_pass": args.one_pass, "proxy_source": args.proxy_source,
                        "proxy_tokens": proxy.numel(),
                        "eval_tokens": eval_w.numel(), "steps": cfg["steps"],
                        "batch_windows": cfg["batch"], "seq": seq, "student": cfg["student"],
                        "lr": cfg["lr"], "threads": torch.get_num_threads()},
           "results": []}
    rows = out["results"]
    with tempfile.TemporaryDirectory(prefix="fd-lm-distill-") as tmp:
        work = Path(tmp)
        only = {n for n in args.only.split(",") if n}
        hw = args.hard_weight
        ce = train_student("ce_only", cfg, vocab, proxy, eval_w, args.temperature)
        rows.append(ce)
        if not only or "dense_kd" in only:
            # dense bytes per token, measured on the first 64 windows (the size is per token)
            dense_bytes = write_bundle(work / "dense", DenseCodec(),
                                       forward_logits(teacher, proxy[:64]), vocab)
            rows.append({**train_student("dense_kd", cfg, vocab, proxy, eval_w,
                                         args.temperature, dense=dense, hard_weight=hw),
                         "bytes_per_token": dense_bytes / proxy[:64].numel()})
        settings = [("topk_kd", int(k), TopKCodec(int(k))) for k in args.ks.split(",")]
        settings += [("sample_kd", None, SampleCodec(d, args.temperature)) for d in draws]
        for name, k, codec in settings:
            if only and name not in only and f"{name}{k}" not in only:
                continue
            path = work / f"{name}-{k if k is not None else codec.draws}"
            size = write_bundle(path, codec, source, vocab)
            block = read_bundle(path).read_all()
            row = train_student(name, cfg, vocab, proxy, eval_w, args.temperature,
                                teacher=TeacherRows(block, args.temperature), hard_weight=hw)
            row["bytes_per_token"] = size / proxy.numel()
            if k is not None:
                row["k"] = k
            else:
                row["draws"] = codec.draws
                ids = block.tensors["ids"]
                row["unique_ids_per_token"] = round(
                    float((block.tensors["counts"] > 0).sum()) / len(ids), 2)
            rows.append(row)
        # the reference step time is ce_only's, measured first and again last (the mean of
        # the two medians), so that drift on a shared machine does not favour either end
        again = train_student("ce_only", cfg, vocab, proxy, eval_w, args.temperature)
        ce_step = (ce["step_s"] + again["step_s"]) / 2
        out["ce_step_s_first_last"] = [round(ce["step_s"], 5), round(again["step_s"], 5)]
        for r in rows:
            r["step_time_ratio_vs_ce"] = round(r["step_s"] / ce_step, 4)
            r["step_s"] = round(r["step_s"], 5)
            if "bytes_per_token" in r:
                r["bytes_per_token"] = round(r["bytes_per_token"], 3)
        ref = next((r["student_ppl"] for r in rows if r["name"] == "dense_kd"), None)
        for r in rows:
            if ref:
                r["ppl_vs_dense_kd"] = round(r["student_ppl"] / ref, 4)
        emit = [emit_overhead(teacher, proxy[:32], vocab, work, "teacher")]
        wide = make_student(cfg["wide"], vocab, seq, seed=2).eval()
        emit.append(emit_overhead(wide, proxy[:cfg["wide_windows"]], vocab, work,
                                  f"gpt2 {cfg['wide']['n_layer']}x{cfg['wide']['n_embd']}"))
        out["emit"] = emit
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
