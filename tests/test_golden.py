"""Golden bundles checked into tests/data pin the format: an accidental change to what the
writer produces, or to how the reader interprets existing bytes, fails here.

A deliberate change bumps FORMAT_VERSION, reruns tests/data/make_golden.py and updates the
pinned digests below.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import zstandard
from safetensors.torch import load

from fdcli import read_bundle, verify_bundle
from fdcli.bundle.shards import parse_header

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_golden import write_golden  # noqa: E402

# sha256 (first 16 hex digits) of each tensor's bytes in the checked-in shards
PINNED = {
    ("golden-topk-token", "shard-00000.safetensors.zst"): {
        "example_ids": "ab25350e3e65efeb", "ids": "f49a270a63419061",
        "logp_codes": "329f743f6e272015", "lse": "57e5a4354ed4f8cd",
        "row_offsets": "62752d423b7304f4", "tail_logp": "ebc59717a008976c"},
    ("golden-topk-token", "shard-00001.safetensors.zst"): {
        "example_ids": "f13ee6ed54ea2aae", "ids": "01a8616dc9299e31",
        "logp_codes": "ab0c82c3d3397cd9", "lse": "83518b27ec6332ca",
        "row_offsets": "f7548c023e431138", "tail_logp": "2a55ffe8b2392726"},
    ("golden-dense-class", "shard-00000.safetensors.zst"): {
        "example_ids": "ec5eae087ec077bc", "logp": "5fbd286df92e0e8b"},
}


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                          ).hexdigest()[:16]


def _raw(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().decompress(path.read_bytes())


@pytest.mark.parametrize("bundle,shard", sorted(PINNED))
def test_checked_in_shards_hold_the_pinned_bytes(bundle, shard):
    tensors = load(_raw(DATA / bundle / shard))
    assert {k: _digest(v) for k, v in tensors.items()} == PINNED[(bundle, shard)]


def test_golden_bundles_verify_and_decode_to_pinned_values():
    for name in ("golden-topk-token", "golden-dense-class"):
        assert verify_bundle(DATA / name).ok
    token = read_bundle(DATA / "golden-topk-token")
    assert token.manifest.encoding == {"name": "topk", "k": 4, "value_dtype": "int8",
                                       "scale": 1 / 32}
    block = token.read_all()
    assert block.example_ids.tolist() == [0, 1, 2, 5]
    assert block.row_offsets.tolist() == [0, 2, 5, 6, 10]
    sp = block.sparse()
    assert sp.ids.shape == (10, 4)
    assert sp.ids[0].tolist() == [1, 6, 11, 16]
    assert block.tensors["logp_codes"][0].tolist() == [13, 12, 10, 8]
    # sqrt(p) = code / 32, renormalised over the kept ids and the stored tail
    stored = 2 * (torch.tensor([13.0, 12, 10, 8]) / 32).log()
    shift = stored.exp().sum() + torch.tensor(-0.6580126285552979).exp()
    assert torch.allclose(sp.logp[0], stored - shift.log(), atol=1e-6)
    assert abs(float(sp.tail_logp[0]) - (-0.6580126285552979 - float(shift.log()))) < 1e-6
    dense = read_bundle(DATA / "golden-dense-class")
    assert dense.manifest.label_space["names"] == ["neg", "neu", "pos"]
    probs = dense.read_all().dense().exp()
    assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-4)
    assert probs.argmax(-1).tolist() == [1, 1, 0, 0]


def test_the_writer_still_produces_the_golden_bundles(tmp_path):
    write_golden(tmp_path)
    for name in ("golden-topk-token", "golden-dense-class"):
        old = json.loads((DATA / name / "manifest.json").read_text())
        new = json.loads((tmp_path / name / "manifest.json").read_text())
        for m in (old, new):  # compressed bytes depend on the zstd build, not on the format
            for s in m["shards"]:
                del s["sha256"], s["bytes"]
        old_fid, new_fid = old.pop("fidelity"), new.pop("fidelity")
        assert new == old
        for key, value in old_fid.items():
            assert value is None and new_fid[key] is None or abs(new_fid[key] - value) < 1e-6
        for shard in old["shards"]:
            old_raw, new_raw = (_raw(root / name / shard["file"]) for root in (DATA, tmp_path))
            assert parse_header(new_raw, "new") == parse_header(old_raw, "old")
            old_t, new_t = load(old_raw), load(new_raw)
            for key, value in old_t.items():
                if value.is_floating_point():
                    # float32 reductions may differ in the last ulp between CPU builds
                    assert torch.allclose(new_t[key].float(), value.float(), rtol=1e-6), key
                else:
                    assert torch.equal(new_t[key], value), key
