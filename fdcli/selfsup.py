"""SimCLR-style self-supervised training (Chen et al. 2020) of an encoder on unlabelled data:
the baseline an institution gets from the proxy set alone, without any teacher.

Two augmented views of each example are pulled together and pushed from the batch's other
views (NT-Xent) through a small projection head, which is dropped afterwards. Images: a random
shift of up to an eighth of the side (replicate padding, then a crop) and Gaussian noise;
texts: a random crop of 60-100% of the words, then word dropout of 15%.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from .embedding import pool
from .models import Classifier, batch_inputs


def augment_images(pixels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random shift (up to 1/8 of the side) and Gaussian noise, per image ``[B, C, H, W]``."""
    b, _, h, w = pixels.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(pixels, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    out = torch.stack([padded[i, :, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
                       for i in range(b)])
    return out + 0.1 * out.std() * torch.randn(out.shape, generator=g)


def augment_text(text: str, rng: random.Random) -> str:
    """A random crop of 60-100% of the words, then word dropout of 15% (never empty)."""
    words = str(text).split()
    if len(words) < 2:
        return str(text)
    n = max(1, int(len(words) * rng.uniform(0.6, 1.0)))
    start = rng.randint(0, len(words) - n)
    kept = [w for w in words[start:start + n] if rng.random() > 0.15]
    return " ".join(kept or words[start:start + n])


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view's positive is the other view of its example, among the 2B - 1
    other views of the batch."""
    z = torch.nn.functional.normalize(torch.cat([a, b]).float(), dim=-1)
    sims = z @ z.T / temperature
    sims.fill_diagonal_(-float("inf"))
    n = len(a)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sims.device)
    return torch.nn.functional.cross_entropy(sims, targets)


def _views(enc: Classifier, values: Sequence[Any], g: torch.Generator, rng: random.Random,
           device) -> dict[str, torch.Tensor]:
    if enc.kind == "image":
        pixels = batch_inputs(enc, list(values))["pixel_values"]
        return {"pixel_values": augment_images(pixels, g).to(device)}
    batch = batch_inputs(enc, [augment_text(v, rng) for v in values])
    return {k: v.to(device) for k, v in batch.items()}


def simclr(enc: Classifier, values: Sequence[Any], *, pooling: str, epochs: int,
           learning_rate: float, batch_size: int, seed: int = 0, temperature: float = 0.2,
           projection_dim: int = 64, progress=None) -> dict[str, float]:
    """Train ``enc.model`` in place with SimCLR on ``values``; returns the last epoch's mean
    loss and the steps taken."""
    if len(values) < 2 or batch_size < 2:
        raise ValueError("SimCLR needs at least two examples and a batch size of two")
    torch.manual_seed(seed)
    g, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    device = next(enc.model.parameters()).device
    enc.model.train()
    with torch.no_grad():
        width = pool(enc.model(**_views(enc, values[:2], g, rng, device)), {}, pooling).shape[1]
    head = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                               torch.nn.Linear(width, projection_dim)).to(device)
    opt = torch.optim.AdamW([*enc.model.parameters(), *head.parameters()], lr=learning_rate)
    steps, last = 0, float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(values), generator=g).tolist()
        losses = []
        for start in range(0, len(order) - 1, batch_size):
            batch = [values[i] for i in order[start:start + batch_size]]
            if len(batch) < 2:
                continue
            views = [_views(enc, batch, g, rng, device) for _ in range(2)]
            a, b = (head(pool(enc.model(**v), v, pooling)) for v in views)
            loss = nt_xent(a, b, temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
            if progress is not None:
                progress(1)
        last = sum(losses) / max(len(losses), 1)
    enc.model.eval()
    return {"loss": last, "steps": steps}
