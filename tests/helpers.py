"""Shared helpers: deterministic logits and small bundles written with the real writer."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fdcli.bundle import BundleWriter, fingerprint_labels

PROXY_FP = "sha256:" + "ab" * 32
MODEL_FP = "sha256:" + "cd" * 32


def peaked_logits(rows: int, vocab: int, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    """Logits with a few likely ids per row and a long tail, like a trained model's."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, vocab, generator=g)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
    zipf = -1.2 * ranks.log()[torch.randperm(vocab, generator=g)]
    return scale * base.tanh() + zipf


def make_bundle(path: Path, codec, *, task="token", vocab=64, examples=6, rows_per_example=None,
                data_seed=0, labels=None, **kw):
    """Write a bundle and return (manifest, logits, example_ids, row_counts)."""
    if rows_per_example is None:
        rows_per_example = [1] * examples if task == "classification" else [
            1 + (i * 3) % 5 for i in range(examples)]
    rows = sum(rows_per_example)
    logits = peaked_logits(rows, vocab, data_seed)
    ids = torch.arange(examples) * 10 + 3
    names = labels or [f"label-{i}" for i in range(vocab)]
    kw.setdefault("proxy_fingerprint", PROXY_FP)
    kw.setdefault("client_id", "client-a")
    with BundleWriter(path, codec=codec, task=task, num_classes=vocab,
                      label_names=names if task == "classification" else None,
                      label_fingerprint=None if task == "classification"
                      else fingerprint_labels(names),
                      model_fingerprint=MODEL_FP, **kw) as w:
        w.add(ids, logits, row_counts=rows_per_example if task == "token" else None)
    return w.manifest, logits, ids, torch.tensor(rows_per_example)


def exact_logp(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def isclose(a: float, b: float, tol: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= tol


def shard_path(bundle: Path, index: int = 0) -> Path:
    return bundle / f"shard-{index:05d}.safetensors.zst"


def load_manifest(bundle: Path) -> dict:
    import json

    return json.loads((bundle / "manifest.json").read_text())


def save_manifest(bundle: Path, manifest: dict) -> None:
    import json

    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def replace_shard_raw(bundle: Path, index: int, raw: bytes, *, content_size: bool = True,
                      fix_manifest: bool = True) -> None:
    """Recompress ``raw`` as shard ``index`` and (by default) make the manifest agree with it,
    the way a careless or hostile producer would."""
    import hashlib

    import zstandard

    data = zstandard.ZstdCompressor(write_content_size=content_size).compress(raw)
    shard_path(bundle, index).write_bytes(data)
    if fix_manifest:
        m = load_manifest(bundle)
        m["shards"][index].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                                  raw_bytes=len(raw))
        save_manifest(bundle, m)


def shard_raw(bundle: Path, index: int = 0) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(shard_path(bundle, index).read_bytes())


def replace_shard_tensors(bundle: Path, index: int, change) -> None:
    """Load shard ``index``, let ``change(tensors)`` edit the dict, save it back consistently."""
    from safetensors import safe_open
    from safetensors.torch import load, save

    raw = shard_raw(bundle, index)
    tensors = load(raw)
    path = shard_path(bundle, index).with_suffix("")
    path.write_bytes(raw)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    path.unlink()
    change(tensors)
    replace_shard_raw(bundle, index, save(tensors, metadata=meta))


def fd(*args, **kwargs):
    """The fd command line run in process through Typer's CliRunner (the one runner every test
    uses), each argument as a string; the CliRunner result (exit_code, output, stdout,
    stderr)."""
    from typer.testing import CliRunner

    from fdcli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def fd_ok(*args, **kwargs):
    """:func:`fd`, asserting that the command succeeded."""
    result = fd(*args, **kwargs)
    assert result.exit_code == 0, result.output
    return result


def write_tiny_gguf(path: Path, tokenizer_dir: Path, *, hidden: int = 32, layers: int = 1,
                    heads: int = 2, ffn: int = 64, context: int = 64, seed: int = 0) -> Path:
    """A tiny llama-architecture GGUF checkpoint with random fp32 weights and the byte-level
    BPE tokenizer of ``tokenizer_dir`` (its tokens and merges), written with the ``gguf``
    package the way llama.cpp lays one out."""
    import json as _json

    import gguf
    import numpy as np

    tok = _json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    eos = vocab["<|endoftext|>"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == "<|endoftext|>" else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(eos)
    rng = np.random.default_rng(seed)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w.add_tensor("token_embd.weight", t(len(tokens), hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for b in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (hidden, hidden)),
                            ("attn_v", (hidden, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            w.add_tensor(f"blk.{b}.{name}.weight", t(*shape))
        w.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
