"""A small, real causal-LM teacher for the benchmarks, trained on the Python standard library.

Every machine with Python has the standard library's source, so this teacher needs no download.
It trains a byte-level BPE tokenizer (8,192 ids by default) and a 2-layer GPT-2 briefly on CPU,
then caches the tokenizer, the model and held-out token ids under ``--cache``.

    python benchmarks/lm_teacher.py --steps 600     # prints the teacher's figures as JSON

Other benchmarks import :func:`load_teacher`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sysconfig
import time
from pathlib import Path

import torch

DEFAULT_CACHE = Path(os.environ.get("FD_BENCH_CACHE", Path.home() / ".cache" / "fd-bench"))


def stdlib_files() -> list[Path]:
    """The standard library's own .py files, sorted, without site-packages and test suites."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _read(paths: list[Path], limit: int) -> list[str]:
    texts, total = [], 0
    for p in paths:
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(t)
        total += len(t)
        if total >= limit:
            break
    return texts


def train_teacher(cache: Path, vocab: int = 8192, steps: int = 600, seq: int = 128,
                  batch: int = 32, seed: int = 0, n_embd: int = 128,
                  train_chars: int = 12_000_000, held_chars: int = 1_000_000) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    files = stdlib_files()
    train_files = [p for i, p in enumerate(files) if i % 10 != 0]
    held_files = [p for i, p in enumerate(files) if i % 10 == 0]
    train_text = _read(train_files, train_chars)
    held_text = _read(held_files, held_chars)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_text, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    eos = fast.eos_token_id

    def ids_of(texts: list[str]) -> torch.Tensor:
        out: list[int] = []
        for enc in tok.encode_batch(texts):
            out.extend(enc.ids + [eos])
        return torch.tensor(out, dtype=torch.long)

    train_ids, held_ids = ids_of(train_text), ids_of(held_text)
    config = GPT2Config(vocab_size=len(fast), n_positions=seq, n_embd=n_embd, n_layer=2, n_head=4,
                        bos_token_id=eos, eos_token_id=eos)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT2LMHeadModel(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(train_ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([train_ids[s:s + seq] for s in starts]).to(device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t0

    model = model.cpu()
    cache.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cache / "teacher")
    fast.save_pretrained(cache / "teacher")
    torch.save(held_ids, cache / "held_ids.pt")
    info = {"vocab_size": len(fast), "steps": steps, "seq": seq, "batch": batch, "seed": seed,
            "n_embd": n_embd, "train_chars": train_chars, "vocab": vocab,
            "held_chars": held_chars,
            "train_tokens": len(train_ids), "held_tokens": len(held_ids),
            "train_s": round(train_s, 1), "train_device": device,
            "python": sysconfig.get_python_version()}
    info.update(teacher_quality(model, held_ids, seq))
    (cache / "teacher.json").write_text(json.dumps(info, indent=2))
    return info


def unigram_entropy(ids: torch.Tensor, vocab: int) -> float:
    counts = torch.bincount(ids, minlength=vocab).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


@torch.no_grad()
def teacher_quality(model, held_ids: torch.Tensor, seq: int, max_windows: int = 64) -> dict:
    model.eval()
    n = min(max_windows, (len(held_ids) - 1) // seq)
    x = held_ids[: n * seq].view(n, seq).to(model.device)
    loss = float(model(input_ids=x, labels=x).loss)
    return {"held_out_ce_nats": round(loss, 4), "held_out_ppl": round(math.exp(loss), 2),
            "unigram_entropy_nats": round(unigram_entropy(held_ids, model.config.vocab_size), 4)}


def load_teacher(cache: Path = DEFAULT_CACHE, steps: int = 600, **kwargs):
    """(model, held-out ids, info), training the teacher first if the cache lacks it.
    ``kwargs`` are further :func:`train_teacher` settings (a smaller teacher for quick runs)."""
    from transformers import GPT2LMHeadModel

    info_path = cache / "teacher.json"
    want = {"steps": steps, **kwargs}
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    # caches written before n_embd, train_chars and vocab were settings used the defaults
    have = {"n_embd": 128, "train_chars": 12_000_000, "vocab": 8192, "held_chars": 1_000_000,
            **info}
    if not info or any(have.get(k) != v for k, v in want.items()):
        train_teacher(cache, steps=steps, **kwargs)
    model = GPT2LMHeadModel.from_pretrained(cache / "teacher").eval()
    if torch.cuda.is_available():
        model = model.cuda()
    held = torch.load(cache / "held_ids.pt", weights_only=True)
    return model, held, json.loads(info_path.read_text())


@torch.no_grad()
def teacher_logits(model, held_ids: torch.Tensor, tokens: int, seq: int = 128) -> torch.Tensor:
    """Next-token logits [tokens, vocab] (fp32) on held-out text."""
    n = math.ceil(tokens / seq)
    x = held_ids[: n * seq].view(n, seq)
    out = [model(input_ids=b.to(model.device)).logits.float().cpu() for b in x.split(64)]
    return torch.cat(out).reshape(-1, model.config.vocab_size)[:tokens]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="training steps (batch 32 x 128)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    print(json.dumps(train_teacher(args.cache, steps=args.steps), indent=2))
