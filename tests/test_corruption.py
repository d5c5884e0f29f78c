"""A battery of broken bundles: every one raises BundleError with a clear message, and
nothing else escapes, whether read through the library, verify_bundle or the CLI."""

from __future__ import annotations

import struct

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdcli import BundleError, DenseCodec, SampleCodec, TopKCodec, read_bundle, verify_bundle
from fdcli.bundle.safeio import Limits

from .helpers import (load_manifest, make_bundle, replace_shard_raw, replace_shard_tensors,
                      save_manifest, shard_path, shard_raw)


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "bundle"
    make_bundle(path, TopKCodec(k=4, value_dtype="fp16"), vocab=300, examples=6,
                max_shard_rows=10)
    return path


def read_everything(path):
    reader = read_bundle(path)
    return [b.dense() for b in reader.iter_blocks()]


def expect_problem(path, *fragments):
    """The library raises BundleError naming every fragment; verify reports the same."""
    with pytest.raises(BundleError) as info:
        read_everything(path)
    message = str(info.value)
    for f in fragments:
        assert f in message, message
    report = verify_bundle(path)
    assert not report.ok
    assert any(all(f in p for f in fragments) for p in report.problems), report.problems
    return message


def test_sound_bundle_passes(bundle):
    assert verify_bundle(bundle).ok
    assert len(read_everything(bundle)) >= 2


def test_truncated_shard(bundle):
    p = shard_path(bundle)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    expect_problem(bundle, "shard-00000.safetensors.zst", "bytes on disk, the manifest declares",
                   "truncated")


def test_wrong_sha256(bundle):
    m = load_manifest(bundle)
    m["shards"][1]["sha256"] = "0" * 64
    save_manifest(bundle, m)
    expect_problem(bundle, "shard-00001.safetensors.zst", "sha256 is",
                   "the manifest declares " + "0" * 64)


def test_flipped_byte_in_zstd_frame_is_caught_by_sha256(bundle):
    p = shard_path(bundle)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    expect_problem(bundle, "shard-00000.safetensors.zst", "sha256 is")


def test_flipped_bytes_in_zstd_frame_with_a_matching_sha256(bundle):
    """A producer that hashed already-corrupt data: decompression itself must catch it."""
    import hashlib

    p = shard_path(bundle)
    data = bytearray(p.read_bytes())
    for i in range(12, len(data) - 8, 7):
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))
    m = load_manifest(bundle)
    m["shards"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    save_manifest(bundle, m)
    msg = expect_problem(bundle, "shard-00000.safetensors.zst")
    assert "zstd" in msg or "decompressed to" in msg or "safetensors" in msg


def test_flipped_bytes_in_safetensors_header(bundle):
    raw = bytearray(shard_raw(bundle))
    start = raw.index(b'"dtype"')
    raw[start + 1: start + 6] = b"XXXXX"
    replace_shard_raw(bundle, 0, bytes(raw))
    expect_problem(bundle, "shard-00000.safetensors.zst", "malformed")


def test_header_length_past_end(bundle):
    raw = bytearray(shard_raw(bundle))
    raw[:8] = struct.pack("<Q", 10 ** 9)
    replace_shard_raw(bundle, 0, bytes(raw))
    expect_problem(bundle, "header length 1000000000 runs past the end")


def test_header_not_json(bundle):
    raw = bytearray(shard_raw(bundle))
    raw[8] = ord("[") + 1
    replace_shard_raw(bundle, 0, bytes(raw))
    expect_problem(bundle, "safetensors header is not valid JSON")


def test_manifest_lies_about_rows_of_a_shard(bundle):
    m = load_manifest(bundle)
    m["shards"][0]["rows"] += 3
    m["rows"] += 3
    save_manifest(bundle, m)
    expect_problem(bundle, "shard-00000.safetensors.zst", "metadata 'rows'")


def test_manifest_lies_about_total_rows(bundle):
    m = load_manifest(bundle)
    m["rows"] += 1
    save_manifest(bundle, m)
    expect_problem(bundle, "field 'rows'", "but the shards hold")


def test_manifest_lies_about_dtype(bundle):
    m = load_manifest(bundle)
    m["encoding"]["value_dtype"] = "int8"
    save_manifest(bundle, m)
    expect_problem(bundle, "metadata 'encoding'")


def test_shard_tensor_with_wrong_shape_and_dtype(bundle):
    def change(t):
        t["logp"] = t["logp"][:, :3].float().contiguous()
    replace_shard_tensors(bundle, 0, change)
    expect_problem(bundle, "tensor 'logp': expected F16[", "found F32[")


def test_shard_missing_a_tensor(bundle):
    replace_shard_tensors(bundle, 0, lambda t: t.pop("lse"))
    expect_problem(bundle, "tensor 'lse' is missing")


def test_oversized_frame_declared(bundle):
    small = Limits(max_shard_bytes=1000)
    with pytest.raises(BundleError, match="max_shard_bytes limit of 1000"):
        list(read_bundle(bundle, small).iter_blocks())
    report = verify_bundle(bundle, small)
    assert any("refusing to" in p for p in report.problems)


def test_frame_that_grows_past_its_declared_size(bundle):
    """A decompression bomb: a sound shard followed by far more data than declared, with no
    content size in the frame."""
    raw = shard_raw(bundle)
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(raw + b"\0" * 5_000_000)
    shard_path(bundle).write_bytes(bomb)
    import hashlib

    m = load_manifest(bundle)
    m["shards"][0].update(sha256=hashlib.sha256(bomb).hexdigest(), bytes=len(bomb),
                          raw_bytes=len(raw))
    save_manifest(bundle, m)
    expect_problem(bundle, f"decompressed to more than {len(raw)} bytes")


def test_frame_declaring_a_size_other_than_the_manifest(bundle):
    raw = shard_raw(bundle)
    replace_shard_raw(bundle, 0, raw)
    m = load_manifest(bundle)
    m["shards"][0]["raw_bytes"] += 100
    save_manifest(bundle, m)
    expect_problem(bundle, "the zstd frame declares", "refusing to decompress")


def test_not_a_zstd_frame(bundle):
    replace_shard_raw(bundle, 0, b"")  # builds a valid manifest entry first
    p = shard_path(bundle)
    p.write_bytes(b"PK\x03\x04 definitely a zip")
    import hashlib

    m = load_manifest(bundle)
    m["shards"][0].update(sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
                          bytes=p.stat().st_size, raw_bytes=100)
    save_manifest(bundle, m)
    expect_problem(bundle, "not a zstd frame")


def test_unknown_version(bundle):
    m = load_manifest(bundle)
    m["version"] = 7
    save_manifest(bundle, m)
    msg = expect_problem(bundle, "field 'version'", "reads bundle format version 1",
                         "found version 7")
    assert "manifest.json" in msg


def test_not_a_bundle_format(bundle):
    m = load_manifest(bundle)
    m["format"] = "something-else"
    save_manifest(bundle, m)
    expect_problem(bundle, "field 'format'", "not an fd logit bundle")


@pytest.mark.parametrize("tensor,value,fragment", [
    ("tail_logp", float("nan"), "tensor 'tail_logp': 1 value(s) are NaN or +Inf"),
    ("lse", float("inf"), "tensor 'lse': 1 value(s) are NaN or Inf"),
    ("lse", float("-inf"), "tensor 'lse': 1 value(s) are NaN or Inf"),
    ("logp", float("nan"), "tensor 'logp': 1 value(s) are NaN or Inf"),
    ("logp", float("inf"), "tensor 'logp': 1 value(s) are NaN or Inf"),
])
def test_nan_and_inf_values(bundle, tensor, value, fragment):
    def change(t):
        flat = t[tensor].view(-1)
        flat[1] = value
    replace_shard_tensors(bundle, 0, change)
    expect_problem(bundle, "shard-00000.safetensors.zst", fragment)


def test_ids_out_of_range(bundle):
    def change(t):
        t["ids"][0, 0] = 299 + 5
    replace_shard_tensors(bundle, 0, change)
    expect_problem(bundle, "tensor 'ids': id 304 is out of range")


def test_unnormalised_rows(bundle):
    def change(t):
        t["logp"] += 1.0
    replace_shard_tensors(bundle, 0, change)
    expect_problem(bundle, "is positive")


def test_row_offsets_that_do_not_add_up(bundle):
    def change(t):
        t["row_offsets"][-1] += 1
    replace_shard_tensors(bundle, 0, change)
    expect_problem(bundle, "tensor 'row_offsets': expected to run from 0 to")


def test_duplicate_example_ids_across_shards(bundle):
    def change(t):
        t["example_ids"][0] = 3  # the first example of shard 0 is 3 as well
    replace_shard_tensors(bundle, 1, change)
    report = verify_bundle(bundle)
    assert "an example id appears in more than one shard" in report.problems[-1]


def test_sample_counts_that_do_not_add_up(tmp_bundle):
    make_bundle(tmp_bundle, SampleCodec(draws=10), vocab=30)

    def change(t):
        t["counts"][0, 0] += 1
    replace_shard_tensors(tmp_bundle, 0, change)
    expect_problem(tmp_bundle, "tensor 'counts': 1 row(s) do not add up to draws=10")


def test_missing_manifest_and_missing_shard_and_stray_file(bundle):
    shard_path(bundle, 1).unlink()
    (bundle / ".shard-00002.safetensors.zst.part").write_bytes(b"x")
    report = verify_bundle(bundle)
    assert any("shard-00001.safetensors.zst: listed in manifest.json but missing" in p
               for p in report.problems)
    assert any("not listed in manifest.json (a leftover of an interrupted write?)" in p
               for p in report.problems)
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        read_bundle(bundle)


def test_manifest_with_many_problems_lists_them_all(bundle):
    m = load_manifest(bundle)
    m["task"] = "regression"
    m["num_classes"] = "many"
    m["shards"][0]["sha256"] = "xyz"
    m["shards"][1]["bytes"] = -1
    del m["producer"]["client_id"]
    m["fidelity"]["mean_kl_nats"] = "tiny"
    save_manifest(bundle, m)
    with pytest.raises(BundleError) as info:
        read_bundle(bundle)
    assert len(info.value.problems) == 6, info.value.problems
    assert all(p.startswith(str(bundle / "manifest.json")) for p in info.value.problems)
    msg = str(info.value)
    for fragment in ["6 problem(s) found", "field 'task': expected one of",
                     "field 'fidelity.mean_kl_nats': expected a number or null, found 'tiny'",
                     "field 'num_classes': expected int, found 'many'",
                     "field 'shards[0].sha256': expected 64 hex digits",
                     "field 'shards[1].bytes': expected an integer >= 1, found -1",
                     "field 'producer.client_id': expected str, found None"]:
        assert fragment in msg


def test_manifest_not_json(bundle):
    (bundle / "manifest.json").write_text("{not json")
    expect_problem(bundle, "manifest.json: not valid JSON")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_shard_bytes_raise_bundle_error_or_read_cleanly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "bundle"
    codec = data.draw(st.sampled_from([DenseCodec(), TopKCodec(k=3), TopKCodec(
        k=3, value_dtype="fp16"), SampleCodec(draws=6)]))
    make_bundle(path, codec, vocab=20, examples=3)
    raw = bytearray(shard_raw(path))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    replace_shard_raw(path, 0, bytes(raw))
    try:
        read_everything(path)
    except BundleError as exc:
        assert "shard-00000.safetensors.zst" in str(exc)
    report = verify_bundle(path)  # must never raise
    assert isinstance(report.problems, list)
