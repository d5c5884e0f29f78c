"""Probe: does an exact top-k head plus a sampled tail beat plain sampling?

Builds hybrid teacher rows in memory from the benchmark teacher of benchmarks/lm_distill.py
(the same proxy windows, student, steps and data order): the ``head`` most likely ids exactly,
plus ``draws`` ids drawn with replacement from the renormalised tail, each carrying
``tail mass * count / draws`` (an unbiased estimate of the tail). A plain ``sample_kd`` student
(16 draws, through a real bundle) trains in the same process as the baseline.

    python benchmarks/hybrid_probe.py        # about 3 minutes on 2 cores; prints one JSON object
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lm_distill as bench  # noqa: E402
from lm_teacher import DEFAULT_CACHE, load_teacher  # noqa: E402

from fdcli.bundle import SampleCodec, TeacherRows, read_bundle  # noqa: E402


class HybridRows:
    """Teacher rows with the TeacherRows.batch interface, at temperature 1."""

    temperature = 1.0

    def __init__(self, logits: torch.Tensor, head: int, draws: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        ids, logps = [], []
        for window in logits:
            logp = torch.log_softmax(window.float(), -1)
            head_lp, head_ids = logp.topk(head)
            tail = logp.scatter(1, head_ids, -math.inf)
            tail_mass = torch.logsumexp(tail, -1)
            drawn = torch.multinomial(torch.softmax(tail, -1), draws, replacement=True,
                                      generator=gen)
            counts = torch.zeros_like(logp).scatter_add_(1, drawn, torch.ones_like(drawn,
                                                                                   dtype=logp.dtype))
            c, c_ids = counts.topk(draws)
            c_lp = torch.where(c > 0, tail_mass[:, None] + (c / draws).clamp_min(1e-30).log(),
                               torch.full_like(c, -math.inf))
            ids.append(torch.cat([head_ids, c_ids], -1))
            logps.append(torch.cat([head_lp, c_lp], -1))
        self.ids, self.logp = torch.stack(ids), torch.stack(logps)
        self.ids_per_token = head + float(torch.isfinite(self.logp[..., head:]).sum(-1)
                                          .float().mean())

    def batch(self, example_ids: list[int]) -> dict[str, torch.Tensor]:
        ids = self.ids[example_ids].reshape(-1, self.ids.shape[-1])
        logp = self.logp[example_ids].reshape(-1, self.logp.shape[-1])
        return {"fd_ids": ids, "fd_logp": logp, "fd_tail": torch.full((len(ids),), -math.inf)}


def main() -> None:
    cfg = bench.FULL
    teacher, held, _ = load_teacher(DEFAULT_CACHE, **cfg["teacher"])
    teacher = teacher.cpu().eval()
    vocab, seq = teacher.config.vocab_size, cfg["seq"]
    windows = held[: (cfg["proxy_windows"] + cfg["eval_windows"]) * seq].view(-1, seq)
    proxy, eval_w = windows[:cfg["proxy_windows"]], windows[cfg["proxy_windows"]:]
    logits = bench.forward_logits(teacher, proxy)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        size = bench.write_bundle(Path(tmp) / "s", SampleCodec(16), logits, vocab)
        block = read_bundle(Path(tmp) / "s").read_all()
        rows.append({**bench.train_student("sample_kd", cfg, vocab, proxy, eval_w, 1.0,
                                           teacher=TeacherRows(block, 1.0)),
                     "bytes_per_token": round(size / proxy.numel(), 3)})
    for head, draws in ((4, 12), (8, 8)):
        hybrid = HybridRows(logits, head, draws)
        rows.append({**bench.train_student("hybrid_kd", cfg, vocab, proxy, eval_w, 1.0,
                                           teacher=hybrid),
                     "head": head, "tail_draws": draws,
                     "ids_per_token": round(hybrid.ids_per_token, 2)})
    print(json.dumps({"results": rows}, indent=2))


if __name__ == "__main__":
    main()
