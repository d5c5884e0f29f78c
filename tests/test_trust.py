"""Hostile bundles from an institution the coordinator cannot see: special files, unbounded
manifests, allocations sized by untrusted fields, markup and escapes, duplicates, outputs
inside inputs, incomplete frames, leftovers, signatures and the outlier report. Every
refusal is exit 1 with one line naming the file and the reason, and leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import pytest
import torch
import zstandard

from fdcli.bundle import DenseCodec, TopKCodec, read_bundle, verify_bundle, write_bundle
from fdcli.bundle.safeio import Limits
from fdcli.bundle.signing import keygen, load_private_key, load_trusted_keys
from fdcli.errors import BundleError, FdError, IncompatibleBundlesError
from fdcli.stages.aggregate import aggregate

from .helpers import fd as run

from .helpers import MODEL_FP, PROXY_FP, load_manifest, save_manifest, shard_path, shard_raw

LABELS = ["a", "b", "c", "d"]


def one_line_error(result, *fragments):
    """Exit 1, one line on stderr naming every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in result.output


def client_bundle(path, client="c0", seed=0, examples=40, logits=None, **kw):
    g = torch.Generator().manual_seed(seed)
    if logits is None:
        logits = torch.randn(examples, len(LABELS), generator=g) * 2
    write_bundle(path, torch.arange(len(logits)), logits, codec=DenseCodec(),
                 task="classification", num_classes=len(LABELS), label_names=LABELS,
                 proxy_fingerprint=PROXY_FP, client_id=client, model_fingerprint=MODEL_FP, **kw)
    return path


@pytest.fixture
def three(tmp_path):
    return [client_bundle(tmp_path / f"b{i}", f"c{i}", seed=i) for i in range(3)]


# -- special files ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "sparse", "link-to-valid", "folder"])
def test_special_files_are_refused_without_reading(tmp_path, three, kind):
    bundle = three[0]
    shard = shard_path(bundle)
    if kind == "dev-zero":
        shard.unlink()
        shard.symlink_to("/dev/zero")
        reason = "is a symbolic link; expected a regular file"
    elif kind == "fifo":
        shard.unlink()
        os.mkfifo(shard)
        reason = "is a FIFO (named pipe)"
    elif kind == "sparse":
        os.truncate(shard, 1 << 40)  # a terabyte of holes
        reason = f"{1 << 40} bytes on disk, the manifest declares"
    elif kind == "link-to-valid":
        elsewhere = tmp_path / "elsewhere.zst"
        shard.rename(elsewhere)
        shard.symlink_to(elsewhere)
        reason = "is a symbolic link"
    else:
        shard.unlink()
        shard.mkdir()
        reason = "is a folder"
    result = run("verify", bundle)
    one_line_error(result, str(shard), reason)
    result = run("aggregate", bundle, three[1], "--out", tmp_path / "out")
    one_line_error(result, str(shard), reason)
    assert not (tmp_path / "out").exists()


def test_manifest_that_is_a_symlink_to_a_system_file(three):
    manifest = three[0] / "manifest.json"
    manifest.unlink()
    manifest.symlink_to("/etc/hostname" if os.path.exists("/etc/hostname") else "/dev/null")
    one_line_error(run("inspect", three[0]), str(manifest), "is a symbolic link")


def test_permission_errors_are_one_message(three, monkeypatch):
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if str(path).endswith("manifest.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    one_line_error(run("inspect", three[0]), str(three[0] / "manifest.json"),
                   "cannot be read (Permission denied)")


# -- unbounded manifests ------------------------------------------------------------------
def test_a_huge_manifest_is_refused_before_it_is_read(three):
    manifest = three[0] / "manifest.json"
    with open(manifest, "ab") as fh:
        fh.truncate(200 << 20)  # 200 MB, as sparse as the file system allows
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="over the max_manifest_bytes limit of 8388608"):
            read_bundle(three[0])
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    one_line_error(run("inspect", three[0]), "max_manifest_bytes")


def test_deeply_nested_manifest(three):
    (three[0] / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    one_line_error(run("verify", three[0]), "nested more than 32 levels deep")
    m = load_manifest(three[1])
    m["producer"]["config"]["x"] = json.loads("[" * 40 + "]" * 40)
    save_manifest(three[1], m)
    one_line_error(run("inspect", three[1]), "max_json_depth")
    assert run("inspect", three[1], "--limit", "max_json_depth=64").exit_code == 0


def test_huge_strings_are_refused_and_messages_stay_short(three):
    m = load_manifest(three[0])
    m["producer"]["config"]["note"] = "x" * 100_000
    save_manifest(three[0], m)
    one_line_error(run("verify", three[0]), "a string of 100000 characters, over the "
                   "max_string_chars limit of 4096")
    m["producer"]["config"]["note"] = "short"
    m["producer"]["client_id"] = "x" * 1000
    m["task"] = "y" * 4000
    save_manifest(three[0], m)
    result = run("verify", three[0])
    assert result.exit_code == 1
    assert "expected 1 to 256 characters, found 1000" in result.stderr
    assert "field 'task'" in result.stderr and len(result.stderr) < 1500


# -- allocations sized by untrusted fields ------------------------------------------------
def test_two_to_the_32_classes_is_refused_at_the_manifest(tmp_path):
    path = tmp_path / "huge"
    write_bundle(path, torch.arange(4), torch.randn(4, 40), codec=TopKCodec(k=4),
                 task="classification", num_classes=40, label_fingerprint=PROXY_FP,
                 proxy_fingerprint=PROXY_FP, client_id="liar", model_fingerprint=MODEL_FP)
    m = load_manifest(path)
    m["num_classes"] = 1 << 32
    save_manifest(path, m)
    one_line_error(run("verify", path), "field 'num_classes': expected at most 1048576")
    result = run("aggregate", path, path, "--out", tmp_path / "t")
    assert result.exit_code == 1 and not (tmp_path / "t").exists()
    # raising the limit lets the manifest through; the shards then disagree with it
    report = verify_bundle(path, Limits(max_classes=1 << 33))
    assert any("metadata 'num_classes'" in p for p in report.problems)


def test_dense_allocations_are_bounded(three, tmp_path):
    small = Limits(max_dense_bytes=3 * 4 * 8 - 1)  # less than one example of three clients
    with pytest.raises(BundleError, match="over the max_dense_bytes limit of 95"):
        aggregate(three, tmp_path / "t", rule="mean", limits=small, progress=False)
    assert not (tmp_path / "t").exists()
    # a tight limit that still fits one example streams in small chunks, same result
    tight = Limits(max_dense_bytes=3 * 3 * 4 * 8 * 2)
    aggregate(three, tmp_path / "a", rule="mean", limits=tight, progress=False)
    aggregate(three, tmp_path / "b", rule="mean", progress=False)
    a, b = (read_bundle(tmp_path / x).read_all().dense() for x in "ab")
    assert torch.allclose(a, b)
    result = run("aggregate", *three, "--out", tmp_path / "c", "--limit", "max_dense_bytes=10")
    one_line_error(result, "max_dense_bytes")


@pytest.mark.parametrize("item, fragment", [("max_classes", "expected NAME=VALUE"),
                                            ("nope=3", "expected NAME=VALUE"),
                                            ("max_classes=many", "expected a positive integer"),
                                            ("max_shard_bytes=-1", "expected a positive")])
def test_bad_limit_options(three, item, fragment):
    one_line_error(run("verify", three[0], "--limit", item), fragment)


def test_limit_sizes_take_suffixes():
    limits = Limits().with_overrides(["max_shard_bytes=4GiB", "max-classes=2M"])
    assert limits.max_shard_bytes == 4 << 30 and limits.max_classes == 2 << 20


# -- markup and escapes -------------------------------------------------------------------
def test_markup_and_escape_sequences_print_as_plain_text(tmp_path):
    evil = "[/x][bold red]boom\x1b[2J\x07"
    bundles = [client_bundle(tmp_path / "[red]b0", evil), client_bundle(tmp_path / "b1", "ok",
                                                                         seed=1)]
    for args in (["inspect", bundles[0]], ["aggregate", *bundles, "--out", tmp_path / "t"],
                 ["verify", bundles[0]]):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "\\x1b" in result.output or args[0] == "verify"
        assert "[red]b0" in result.output
    assert "[/x][bold red]boom" in run("inspect", bundles[0]).output


# -- silent acceptance --------------------------------------------------------------------
def test_the_same_bundle_twice_is_refused(three, tmp_path):
    one_line_error(run("aggregate", three[0], three[1], three[0], "--out", tmp_path / "t"),
                   "given twice")
    copy = tmp_path / "copy"
    shutil.copytree(three[0], copy)
    one_line_error(run("aggregate", three[0], copy, "--out", tmp_path / "t"),
                   "the same bundle as", "identical manifests")
    assert not (tmp_path / "t").exists()


def test_one_client_cannot_vote_twice_on_an_example(tmp_path):
    a = client_bundle(tmp_path / "a", "hospital", seed=0)
    b = client_bundle(tmp_path / "b", "hospital", seed=1)
    one_line_error(run("aggregate", a, b, "--out", tmp_path / "t"),
                   "client 'hospital' gives example 0 a second time")
    assert not (tmp_path / "t").exists()


def test_out_inside_or_around_an_input_is_refused(three, tmp_path):
    before = {p.name: p.read_bytes() for p in three[0].iterdir()}
    one_line_error(run("aggregate", *three, "--out", three[0] / "teacher"),
                   "inside the input bundle")
    one_line_error(run("aggregate", *three, "--out", three[0], "--overwrite"),
                   "inside the input bundle")
    one_line_error(run("aggregate", *three, "--out", tmp_path, "--overwrite"),
                   "holds the input bundle")
    assert {p.name: p.read_bytes() for p in three[0].iterdir()} == before


def test_weighted_with_zero_counts_everywhere(tmp_path):
    bundles = [client_bundle(tmp_path / f"w{i}", f"c{i}", seed=i,
                             config={"train_examples": 0}) for i in range(2)]
    one_line_error(run("aggregate", *bundles, "--rule", "weighted", "--out", tmp_path / "t"),
                   "every bundle declares 0 train_examples")


def _reseal(bundle, data):
    shard_path(bundle).write_bytes(data)
    m = load_manifest(bundle)
    m["shards"][0].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    save_manifest(bundle, m)


def test_a_frame_missing_its_checksum_is_incomplete(three):
    data = shard_path(three[0]).read_bytes()
    _reseal(three[0], data[:-4])  # the zstd checksum gone, the sha256 updated to match
    one_line_error(run("verify", three[0]), "the zstd frame is incomplete")


def test_bytes_after_the_frame(three):
    _reseal(three[0], shard_path(three[0]).read_bytes() + b"\0" * 9)
    one_line_error(run("verify", three[0]), "9 byte(s) follow the zstd frame")


def test_a_bomb_is_refused_before_it_is_inflated(three):
    """A sound shard followed by 256 MiB of zeros, the manifest declaring it all: refused
    once the header is read (its tensors do not cover the body), with a few MiB inflated."""
    size = 256 << 20
    raw = shard_raw(three[0])
    bomb = zstandard.ZstdCompressor(level=1).compress(raw + b"\0" * (size - len(raw)))
    _reseal(three[0], bomb)
    m = load_manifest(three[0])
    m["shards"][0]["raw_bytes"] = size
    save_manifest(three[0], m)
    tracemalloc.start()
    try:
        report = verify_bundle(three[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not report.ok and any(f"cover {len(raw) - 8 - int.from_bytes(raw[:8], 'little')} "
                                 "bytes" in p for p in report.problems), report.problems
    assert peak < 80 << 20, peak


# -- leftovers ----------------------------------------------------------------------------
def test_a_failed_aggregate_removes_the_folders_it_created(three, tmp_path):
    target = tmp_path / "new" / "deeper" / "teacher"
    result = run("aggregate", three[0], three[0] / ".." / "b0", "--out", target)
    assert result.exit_code == 1
    assert not (tmp_path / "new").exists()
    bad = client_bundle(tmp_path / "bad", "c9", seed=9)
    _reseal(bad, shard_path(bad).read_bytes()[:-4])
    assert run("aggregate", three[0], bad, "--out", target).exit_code == 1
    assert not (tmp_path / "new").exists()


def test_stale_temporary_folders_of_dead_runs_are_cleared(three, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".teacher.tmp-{dead}-0123abcd"
    live = tmp_path / f".teacher.tmp-{os.getppid()}-0123abcd"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "shard-00000.safetensors.zst").write_bytes(b"partial")
    assert run("aggregate", *three, "--out", tmp_path / "teacher").exit_code == 0
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [live.name]


# -- provenance ----------------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path):
    trusted = tmp_path / "trusted"
    alice = keygen(tmp_path / "private", "alice")
    keygen(tmp_path / "private", "mallory")
    trusted.mkdir()
    shutil.copy(alice["public"], trusted)
    return tmp_path / "private", trusted, alice["key_id"]


def _model_signing(*args):
    """The model-signing package's own command line (model_signing), as a user runs it."""
    exe = shutil.which("model_signing") or os.path.join(os.path.dirname(sys.executable),
                                                         "model_signing")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True)


def test_signed_bundle_verifies_and_tampering_is_refused(tmp_path, keys):
    private, trusted, alice_id = keys
    assert oct(os.stat(private / "alice.key").st_mode & 0o777) == "0o600"
    assert alice_id.startswith("ecdsa:") and len(alice_id) == len("ecdsa:") + 16
    signed = client_bundle(tmp_path / "s", "alice", sign_key=load_private_key(
        private / "alice.key"))
    assert sorted(p.name for p in signed.iterdir()) == [
        "manifest.json", "model.sig", "shard-00000.safetensors.zst"]
    report = verify_bundle(signed, trusted_keys=load_trusted_keys(trusted))
    assert report.ok and report.signer == alice_id
    result = run("verify", signed, "--trusted-keys", trusted)
    assert result.exit_code == 0 and f"signed by {alice_id}" in result.stdout
    # OpenSSF Model Signing: the package's own verifier accepts fd's signature
    ok = _model_signing("verify", "key", signed, "--signature", signed / "model.sig",
                        "--public_key", trusted / "alice.pub")
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr

    # one changed byte in a shard: the manifest's sha256 and the signature both catch it
    changed = tmp_path / "changed"
    shutil.copytree(signed, changed)
    data = bytearray(shard_path(changed).read_bytes())
    data[len(data) // 2] ^= 1
    shard_path(changed).write_bytes(bytes(data))
    bad = _model_signing("verify", "key", changed, "--signature", changed / "model.sig",
                         "--public_key", trusted / "alice.pub")
    assert bad.returncode == 1 and "Verification failed" in bad.stderr
    # the manifest edited to match: the signature still fails, with or without trusted keys
    _reseal(changed, bytes(data))
    result = run("verify", changed, "--trusted-keys", trusted)
    assert result.exit_code == 1 and "altered after it was signed" in result.stderr
    assert "the signature by " + alice_id in " ".join(result.stderr.split())
    result = run("verify", changed)
    assert result.exit_code == 1 and "files changed: ['manifest.json', 'shard-00000" in \
        " ".join(result.stderr.split())
    one_line_error(run("aggregate", changed, three_more(tmp_path), "--out", tmp_path / "t",
                       "--trusted-keys", trusted), "altered after it was signed")
    # an extra file is not covered by the signature
    extra = tmp_path / "extra"
    shutil.copytree(signed, extra)
    (extra / "notes.txt").write_text("hi")
    result = run("verify", extra, "--trusted-keys", trusted)
    assert result.exit_code == 1 and "notes.txt" in result.stderr
    # re-signed with an untrusted key
    from fdcli.bundle.signing import sign_folder

    resigned = tmp_path / "resigned"
    shutil.copytree(signed, resigned)
    (resigned / "model.sig").unlink()
    sign_folder(resigned, None, load_private_key(private / "mallory.key"))
    one_line_error(run("verify", resigned, "--trusted-keys", trusted),
                   "which is not among the trusted keys")
    assert verify_bundle(resigned).ok  # sound, but only its own key vouches for it


def test_older_ed25519_signatures_still_read_with_a_notice(tmp_path):
    from fdcli.bundle.signing import signature_document

    legacy = keygen(tmp_path / "keys", "old", algorithm="ed25519")
    assert legacy["key_id"].startswith("ed25519:")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(legacy["public"], trusted)
    keygen(tmp_path / "keys", "new")  # a trusted folder may hold both kinds
    shutil.copy(tmp_path / "keys" / "new.pub", trusted)
    key = load_private_key(tmp_path / "keys" / "old.key")
    with pytest.warns(UserWarning, match="older Ed25519 format"):
        signed = client_bundle(tmp_path / "s", "old", sign_key=key)
    assert (signed / "signature.json").exists() and not (signed / "model.sig").exists()
    result = run("verify", signed, "--trusted-keys", trusted)
    assert result.exit_code == 0 and f"signed by {legacy['key_id']}" in result.stdout
    assert "warning: " in result.stderr and "the next will not" in result.stderr
    # the manifest edited: the signature over its bytes fails
    m = load_manifest(signed)
    m["producer"]["client_id"] = "someone-else"
    save_manifest(signed, m)
    result = run("verify", signed, "--trusted-keys", trusted)
    assert result.exit_code == 1 and result.stderr.splitlines()[-1].startswith("error: ")
    assert "does not match manifest.json; the bundle was altered" in result.stderr
    doc = json.loads(signature_document(b"{}", key))
    assert (doc["algorithm"], doc["key_id"]) == ("ed25519", legacy["key_id"])


def three_more(tmp_path):
    return client_bundle(tmp_path / "other", "other", seed=7)


def test_aggregate_with_trusted_keys_records_signers(tmp_path, keys):
    private, trusted, alice_id = keys
    signed = client_bundle(tmp_path / "s", "alice",
                           sign_key=load_private_key(private / "alice.key"))
    unsigned = client_bundle(tmp_path / "u", "bob", seed=1)
    one_line_error(run("aggregate", signed, unsigned, "--out", tmp_path / "t",
                       "--trusted-keys", trusted), str(unsigned), "unsigned")
    m = aggregate([signed, unsigned], tmp_path / "t", progress=False,
                  sign_key=load_private_key(private / "alice.key"))
    assert [p["signer"] for p in m.provenance] == [alice_id, None]
    assert verify_bundle(tmp_path / "t", trusted_keys=load_trusted_keys(trusted)).ok


def test_bad_key_files(tmp_path):
    (tmp_path / "k.key").write_text("not a key")
    with pytest.raises(FdError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "k.key")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FdError, match="holds no \\*.pub key files"):
        load_trusted_keys(tmp_path / "empty")
    assert run("keygen", "--out", tmp_path, "--name", "a").exit_code == 0
    one_line_error(run("keygen", "--out", tmp_path, "--name", "a"), "already exists")
    one_line_error(run("keygen", "--out", tmp_path, "--name", "b", "--algorithm", "rsa"),
                   "--algorithm must be one of ['ecdsa-p256'")
    # an ECDSA key on a curve model-signing does not take
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256K1())
    (tmp_path / "k1.key").write_bytes(k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(FdError, match="expected an ECDSA \\(P-256, P-384 or P-521\\)"):
        load_private_key(tmp_path / "k1.key")


def test_forged_signatures(tmp_path, keys):
    private, trusted, _ = keys
    signed = client_bundle(tmp_path / "s", "alice",
                           sign_key=load_private_key(private / "alice.key"))
    doc = json.loads((signed / "model.sig").read_text())
    garbage = {**doc, "dsseEnvelope": {**doc["dsseEnvelope"], "payload": "!!"}}
    no_hint = {**doc, "verificationMaterial": {}}
    for forged, fragment in ((garbage, "not an OpenSSF model signature made with a key"),
                             (no_hint, "not an OpenSSF model signature"),
                             ([1, 2], "not an OpenSSF model signature")):
        (signed / "model.sig").write_text(json.dumps(forged))
        with pytest.raises(BundleError, match=fragment):
            aggregate([signed, client_bundle(tmp_path / "x", "x", seed=5)], tmp_path / "t",
                      progress=False)
        shutil.rmtree(tmp_path / "x")
    # a valid envelope whose signature bytes were swapped
    sig = doc["dsseEnvelope"]["signatures"][0]
    forged = {**doc, "dsseEnvelope": {**doc["dsseEnvelope"], "signatures": [
        {**sig, "sig": sig["sig"][:-8] + ("A" * 8 if not sig["sig"].endswith("A" * 8)
                                          else "B" * 8)}]}}
    (signed / "model.sig").write_text(json.dumps(forged))
    one_line_error(run("verify", signed, "--trusted-keys", trusted),
                   "altered after it was signed")


# -- the outlier report -------------------------------------------------------------------
def test_outlier_report_flags_the_client_that_disagrees(tmp_path):
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (60,), generator=g)
    honest = torch.nn.functional.one_hot(truth, 4).float() * 4
    bundles = [client_bundle(tmp_path / f"h{i}", f"h{i}",
                             logits=honest + torch.randn(60, 4, generator=g) * 0.5)
               for i in range(5)]
    flipped = torch.nn.functional.one_hot((truth + 1) % 4, 4).float() * 8
    bundles.append(client_bundle(tmp_path / "evil", "evil", logits=flipped))
    result = run("aggregate", *bundles, "--rule", "median", "--out", tmp_path / "t", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["outliers"] == ["evil"]
    by_client = {c["client_id"]: c for c in summary["clients"]}
    assert by_client["evil"]["agreement"] == 0.0
    assert min(by_client[f"h{i}"]["agreement"] for i in range(5)) > 0.9
    recorded = read_bundle(tmp_path / "t").manifest.provenance
    assert [p["outlier"] for p in recorded] == [False] * 5 + [True]
    with pytest.raises(IncompatibleBundlesError):
        aggregate(bundles[:1] * 2, tmp_path / "u", progress=False)
