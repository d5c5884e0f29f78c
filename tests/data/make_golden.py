"""Regenerate the golden bundles in tests/data (only when the format changes on purpose,
together with FORMAT_VERSION and the pinned digests in tests/test_golden.py).

    python tests/data/make_golden.py tests/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fdcli.bundle import BundleWriter, DenseCodec, TopKCodec, fingerprint_labels

CREATED = "2026-01-01T00:00:00+00:00"
PROXY_FP = "sha256:" + "0123456789abcdef" * 4
MODEL_FP = "sha256:" + "fedcba9876543210" * 4


def golden_logits(rows: int, vocab: int) -> torch.Tensor:
    """Deterministic logits from a formula: no random generator, so every torch agrees."""
    r = torch.arange(rows, dtype=torch.float64)[:, None]
    v = torch.arange(vocab, dtype=torch.float64)[None, :]
    return (3 * torch.sin(0.7 * r + 1.3 * v) + 2 * torch.cos(0.11 * r * v) - 0.05 * v).float()


def write_golden(root: Path) -> None:
    common = dict(proxy_fingerprint=PROXY_FP, client_id="golden", model_fingerprint=MODEL_FP,
                  created=CREATED, fd_version="0.1.0", seed=0)
    vocab = 300
    with BundleWriter(root / "golden-topk-token", codec=TopKCodec(k=4), task="token",
                      num_classes=vocab, max_shard_rows=6, overwrite=True,
                      label_fingerprint=fingerprint_labels([f"tok{i}" for i in range(vocab)]),
                      config={"purpose": "golden"}, **common) as w:
        w.add([0, 1, 2, 5], golden_logits(10, vocab), row_counts=[2, 3, 1, 4])
    with BundleWriter(root / "golden-dense-class", codec=DenseCodec(), task="classification",
                      num_classes=3, label_names=["neg", "neu", "pos"], overwrite=True,
                      config={"purpose": "golden"}, **common) as w:
        w.add([7, 8, 9, 10], golden_logits(4, 3))


if __name__ == "__main__":
    write_golden(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
