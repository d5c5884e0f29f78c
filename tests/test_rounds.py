"""Rounds: the consensus goes back to the institutions (train-specialist --teacher), label
counts declared at emit time, the coverage rule in aggregate, and fd simulate --rounds."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from fdcli.bundle import read_bundle, verify_bundle
from fdcli.bundle import TeacherRows
from fdcli.training import _Collator

from .test_pipeline import LABELS, make_csv, run, text_recipe


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two clients with a round-1 specialist each, bundles that declare their label counts,
    and a coverage consensus."""
    root = tmp_path_factory.mktemp("rounds")
    text_recipe(root, 200, seed=3, layers=1)
    assert run("partition", root / "all.csv", "--num-clients", 2, "--alpha", 0.5,
               "--out", root / "parts").exit_code == 0
    common = ["--tokenizer", root / "tokenizer", "--epochs", 4, "--lr", 3e-3]
    for i in range(2):
        result = run("train-specialist", root / "parts" / f"client-{i}", "--model",
                     root / "bert.json", "--out", root / f"spec-{i}", "--labels",
                     ",".join(LABELS), "--client-id", f"spec-{i}", *common)
        assert result.exit_code == 0, result.output
        result = run("emit-logits", root / f"spec-{i}", root / "parts" / "proxy", "--out",
                     root / f"bundle-{i}", "--declare-label-counts")
        assert result.exit_code == 0, result.output
    result = run("aggregate", root / "bundle-0", root / "bundle-1", "--rule", "coverage",
                 "--out", root / "consensus")
    assert result.exit_code == 0, result.output
    return root


def test_declared_label_counts_reach_the_manifest_only_when_asked(world, tmp_path):
    meta = json.loads((world / "spec-0" / "fd.json").read_text())
    declared = read_bundle(world / "bundle-0").manifest.producer.config["label_histogram"]
    assert declared == meta["label_histogram"]
    assert sum(declared.values()) == meta["train_examples"]
    result = run("emit-logits", world / "spec-0", world / "parts" / "proxy", "--out",
                 tmp_path / "quiet")
    assert result.exit_code == 0, result.output
    assert "label_histogram" not in read_bundle(tmp_path / "quiet").manifest.producer.config


def test_coverage_consensus_records_its_rule_and_counts(world):
    assert verify_bundle(world / "consensus").ok
    m = read_bundle(world / "consensus").manifest
    counts = [[json.loads((world / f"spec-{i}" / "fd.json").read_text())["label_histogram"][n]
               for n in LABELS] for i in range(2)]
    assert m.producer.config["rule"] == "coverage"
    assert m.producer.config["counts"] == counts
    assert m.producer.config["prior_correction"] is True
    assert m.producer.config["round"] == 1


def test_aggregate_sharpens_the_consensus(world, tmp_path):
    result = run("aggregate", world / "bundle-0", world / "bundle-1", "--rule", "coverage",
                 "--sharpen", 0.1, "--out", tmp_path / "sharp")
    assert result.exit_code == 0, result.output
    sharp = read_bundle(tmp_path / "sharp")
    assert sharp.manifest.producer.config["sharpen"] == 0.1
    soft = read_bundle(world / "consensus").read_all().dense().double().exp()
    expected = torch.softmax(soft / 0.1, dim=-1)
    assert torch.allclose(sharp.read_all().dense().double().exp(), expected, atol=2e-3)
    result = run("aggregate", world / "bundle-0", "--sharpen", -1, "--out", tmp_path / "neg")
    assert result.exit_code == 1 and "sharpen must be a positive temperature" in result.stderr
    assert not (tmp_path / "neg").exists()
    result = run("aggregate", world / "bundle-0", "--sharpen", 0, "--out", tmp_path / "zero")
    assert result.exit_code == 0, result.output  # 0: no sharpening, as for fd simulate
    assert read_bundle(tmp_path / "zero").manifest.producer.config["sharpen"] is None


def test_coverage_refuses_bundles_without_label_counts(world, tmp_path):
    result = run("emit-logits", world / "spec-1", world / "parts" / "proxy", "--out",
                 tmp_path / "silent")
    assert result.exit_code == 0
    result = run("aggregate", world / "bundle-0", tmp_path / "silent", "--rule", "coverage",
                 "--out", tmp_path / "t")
    assert result.exit_code == 1
    assert "silent" in result.stderr and "label_histogram is missing" in result.stderr
    assert "--declare-label-counts" in result.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("schedule", ["mixed", "alternate"])
def test_round_two_specialist_digests_the_consensus(world, tmp_path, schedule):
    out = tmp_path / f"spec-0-r2-{schedule}"
    result = run("train-specialist", world / "parts" / "client-0", "--model", world / "spec-0",
                 "--teacher", world / "consensus", "--proxy", world / "parts" / "proxy",
                 "--schedule", schedule, "--epochs", 2, "--lr", 3e-3, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    meta = json.loads((out / "fd.json").read_text())
    digest = hashlib.sha256((world / "consensus" / "manifest.json").read_bytes()).hexdigest()
    assert meta["round"] == printed["round"] == 2
    assert meta["consensus"]["sha256"] == printed["consensus_sha256"] == digest
    assert meta["consensus"]["clients"] == ["spec-0", "spec-1"]
    assert meta["client_id"] == "spec-0"  # kept from the previous round's model
    assert meta["proxy_examples"] == read_bundle(world / "consensus").manifest.examples
    assert meta["config"]["schedule"] == schedule and meta["config"]["digest_weight"] == 0.2
    before = json.loads((world / "spec-0" / "fd.json").read_text())
    assert meta["train_examples"] == before["train_examples"]  # the proxy is not private data
    assert meta["model_fingerprint"] != before["model_fingerprint"]
    if schedule == "alternate":
        assert "digest_train_loss" in meta["metrics"]
    # its next bundle says which round and consensus it comes from, and so does the next one
    result = run("emit-logits", out, world / "parts" / "proxy", "--out", tmp_path / "b2")
    assert result.exit_code == 0, result.output
    config = read_bundle(tmp_path / "b2").manifest.producer.config
    assert config["round"] == 2 and config["consensus"]["sha256"] == digest
    result = run("aggregate", tmp_path / "b2", world / "bundle-1", "--out", tmp_path / "c2")
    assert result.exit_code == 0, result.output
    assert read_bundle(tmp_path / "c2").manifest.producer.config["round"] == 2


def test_consensus_from_another_proxy_set_or_label_space_is_refused(world, tmp_path):
    make_csv(tmp_path / "other.csv", 30, seed=9)
    result = run("train-specialist", world / "parts" / "client-0", "--model", world / "spec-0",
                 "--teacher", world / "consensus", "--proxy", tmp_path / "other.csv",
                 "--out", tmp_path / "x")
    assert result.exit_code == 1
    assert "other.csv" in result.stderr and "differs from the one" in result.stderr
    assert not (tmp_path / "x").exists()
    # a federation with two labels: its consensus cannot teach a three-label model
    make_csv(tmp_path / "two.csv", 60, seed=4, labels=LABELS[:2])
    common = ["--tokenizer", world / "tokenizer", "--epochs", 1]
    assert run("train-specialist", tmp_path / "two.csv", "--model", world / "bert.json",
               "--out", tmp_path / "two-spec", *common).exit_code == 0
    assert run("emit-logits", tmp_path / "two-spec", world / "parts" / "proxy", "--out",
               tmp_path / "two-bundle").exit_code == 0
    result = run("train-specialist", world / "parts" / "client-0", "--model", world / "spec-0",
                 "--teacher", tmp_path / "two-bundle", "--proxy", world / "parts" / "proxy",
                 "--out", tmp_path / "y")
    assert result.exit_code == 1
    assert "two-bundle" in result.stderr and "label space" in result.stderr
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("args, message", [
    (["--teacher", "consensus"], "go together"),
    (["--teacher", "consensus", "--proxy", "parts/proxy", "--schedule", "sometimes"],
     "schedule must be one of"),
    (["--teacher", "consensus", "--proxy", "parts/proxy", "--digest-weight", "0"],
     "digest_weight must be in (0, 1]"),
])
def test_bad_round_settings_are_refused(world, tmp_path, args, message):
    args = [world / a if a in ("consensus", "parts/proxy") else a for a in args]
    result = run("train-specialist", world / "parts" / "client-0", "--model", world / "spec-0",
                 *args, "--out", tmp_path / "z")
    assert result.exit_code == 1
    assert message in result.stderr
    assert not (tmp_path / "z").exists()


def test_mixed_batches_mark_the_rows_with_teacher_targets(world):
    block = read_bundle(world / "consensus").read_all()
    teacher = TeacherRows(block, 2.0)
    first = [int(e) for e in block.example_ids[:2]]
    collate = _Collator(lambda values: {"x": torch.tensor(values)}, teacher)
    batch = collate([{"value": 1, "label": 2, "target": None},
                     {"value": 2, "label": -100, "target": first[1]},
                     {"value": 3, "label": 0, "target": None}])
    assert batch["fd_soft"].tolist() == [False, True, False]
    assert batch["labels"].tolist() == [2, -100, 0]
    assert batch["fd_dense"].shape == (1, 3)
    assert torch.allclose(batch["fd_dense"][0], block.dense(2.0)[1])
    only_private = collate([{"value": 1, "label": 2, "target": None}])
    assert "fd_dense" not in only_private and only_private["fd_soft"].tolist() == [False]
    only_proxy = collate([{"value": 1, "target": first[0]}])
    assert "fd_soft" not in only_proxy and only_proxy["fd_dense"].shape == (1, 3)


def test_simulate_rounds_count_bytes_both_ways(tmp_path):
    out = tmp_path / "sim"
    result = run("simulate", "--out", out, "--num-clients", 2, "--epochs", 2,
                 "--distill-epochs", 2, "--rounds", 2, "--round-epochs", 1,
                 "--round-distill-epochs", 1, "--rule", "confidence",
                 "--compare-rules", "coverage",
                 "--baselines", "standalone", "--no-privacy", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    round2 = out / "rounds" / "round-2"
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    consensus = sum(p.stat().st_size for p in (out / "teachers" / "confidence").iterdir())
    assert results["rounds"][0]["downloaded_bytes"] == 0
    assert results["rounds"][1]["downloaded_bytes"] == 2 * consensus
    ups = [sum(p.stat().st_size for b in (root / "bundles").iterdir() for p in b.iterdir())
           for root in (out, round2)]
    assert [r["uploaded_bytes"] for r in results["rounds"]] == ups
    curve = results["curves"]["fd"]
    assert [p["uploaded_bytes"] for p in curve] == [ups[0], ups[0] + ups[1]]
    assert [p["total_bytes"] for p in curve] == [ups[0], ups[0] + ups[1] + 2 * consensus]
    assert results["bytes"]["fd"]["total"] == curve[-1]["total_bytes"]
    assert results["bytes"]["fd"]["downloaded_total"] == 2 * consensus
    assert curve[-1]["accuracy"] == results["student"]["accuracy"]
    for i in range(2):
        meta = json.loads((round2 / "specialists" / f"client-{i}" / "fd.json").read_text())
        assert meta["round"] == 2 and meta["client_id"] == f"client-{i}"
        assert meta["consensus"]["sha256"] == hashlib.sha256(
            (out / "teachers" / "confidence" / "manifest.json").read_bytes()).hexdigest()
        # the coverage comparison needs the clients' label counts in every bundle
        assert read_bundle(round2 / "bundles" / f"client-{i}").manifest.producer.config[
            "label_histogram"] == meta["label_histogram"]
    student = json.loads((round2 / "students" / "confidence" / "fd.json").read_text())
    assert student["config"]["student"] == str(out / "students" / "confidence")  # continued
    assert student["config"]["epochs"] == 1
    assert set(results["students_by_rule"]) == {"confidence", "coverage"}
    assert verify_bundle(round2 / "teachers" / "coverage").ok
    # standalone baselines come from round 1 (each client alone), not from the federation
    firsts = results["rounds"][0]["specialists_accuracy"]
    assert len(firsts) == 2
    assert results["baselines"]["standalone"]["accuracy"] == pytest.approx(sum(firsts) / 2)
    assert [s["accuracy"] for s in results["specialists"]] == \
        results["rounds"][1]["specialists_accuracy"]
    report = (out / "report.md").read_text()
    assert "## Rounds" in report and "| 2 |" in report


def test_simulate_refuses_classification_round_options_for_language_models(tmp_path):
    """Token tasks have rounds, but not classification's student-started specialists or
    proxy slices."""
    result = run("simulate", "--task", "causal-lm", "--rounds", 2, "--from-student",
                 "--proxy-slices", 2, "--out", tmp_path / "lm")
    assert result.exit_code == 1
    assert "fd simulate: --from-student, --proxy-slices do not apply to --task causal-lm" in \
        result.stderr
    assert not (tmp_path / "lm").exists()


def test_emit_a_slice_of_the_proxy_set(world, tmp_path):
    import datasets

    n = len(datasets.load_from_disk(str(world / "parts" / "proxy")))
    full = read_bundle(world / "bundle-0").read_all()
    for i in (1, 3):
        result = run("emit-logits", world / "spec-0", world / "parts" / "proxy", "--slice",
                     f"{i}/3", "--out", tmp_path / f"s{i}")
        assert result.exit_code == 0, result.output
        reader = read_bundle(tmp_path / f"s{i}")
        block = reader.read_all()
        lo, hi = (i - 1) * n // 3, i * n // 3
        assert block.example_ids.tolist() == list(range(lo, hi))
        assert reader.manifest.producer.config["proxy_slice"] == [i, 3]
        assert torch.allclose(block.dense(), full.dense()[lo:hi], atol=1e-3)
    for bad in ("0/3", "4/3", "two"):
        result = run("emit-logits", world / "spec-0", world / "parts" / "proxy", "--slice",
                     bad, "--out", tmp_path / "bad")
        assert result.exit_code == 1 and "slice" in result.stderr
        assert not (tmp_path / "bad").exists()


def test_simulate_with_a_fresh_proxy_slice_each_round(tmp_path):
    out = tmp_path / "sim"
    result = run("simulate", "--out", out, "--num-clients", 2, "--epochs", 1,
                 "--distill-epochs", 1, "--rounds", 3, "--round-epochs", 1,
                 "--round-distill-epochs", 1, "--proxy-slices", 2, "--rule", "mean",
                 "--compare-rules", "", "--baselines", "", "--no-privacy", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    import datasets

    n = len(datasets.load_from_disk(str(out / "partition" / "proxy")))
    halves = [list(range(0, n // 2)), list(range(n // 2, n))]
    dirs = [out, out / "rounds" / "round-2", out / "rounds" / "round-3"]
    for r, d in enumerate(dirs):
        ids = read_bundle(d / "bundles" / "client-0").read_all().example_ids.tolist()
        assert ids == halves[r % 2]
        assert read_bundle(d / "teachers" / "mean").read_all().example_ids.tolist() == ids
    # from round 2 the student learns the newest consensus of each slice: the whole proxy
    both = read_bundle(dirs[2] / "teachers" / "mean-all-slices").read_all()
    assert both.example_ids.tolist() == list(range(n))
    newest = read_bundle(dirs[2] / "teachers" / "mean").read_all()
    assert torch.allclose(both.dense()[:n // 2], newest.dense(), atol=1e-3)
    assert results["config"]["proxy_slices"] == 2
    consensus = sum(p.stat().st_size for p in (dirs[1] / "teachers" / "mean").iterdir())
    assert results["rounds"][2]["downloaded_bytes"] == 2 * consensus


def test_a_later_round_keeps_the_models_label_space(world, tmp_path):
    # this round's private data lacks 'praise'; the model's fd.json names the label space
    make_csv(tmp_path / "two.csv", 40, seed=6, labels=LABELS[:2])
    result = run("train-specialist", tmp_path / "two.csv", "--model", world / "spec-0",
                 "--teacher", world / "consensus", "--proxy", world / "parts" / "proxy",
                 "--epochs", 1, "--out", tmp_path / "r2")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "r2" / "fd.json").read_text())
    assert meta["label_names"] == LABELS
    assert meta["label_histogram"]["praise"] == 0 and meta["train_examples"] == 40


def test_sharpen_and_coverage_refuse_token_bundles(tmp_path):
    from fdcli.bundle import TopKCodec
    from fdcli.errors import IncompatibleBundlesError
    from fdcli.stages.aggregate import aggregate

    from .helpers import make_bundle

    make_bundle(tmp_path / "tok", TopKCodec(k=4))
    with pytest.raises(IncompatibleBundlesError, match="--sharpen applies to classification"):
        aggregate([tmp_path / "tok"], tmp_path / "a", sharpen=0.1)
    with pytest.raises(IncompatibleBundlesError, match="rule 'coverage' weights clients"):
        aggregate([tmp_path / "tok"], tmp_path / "b", rule="coverage")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_hostile_label_histograms_are_reported_as_plain_text(tmp_path):
    from fdcli.bundle import DenseCodec

    from .helpers import load_manifest, make_bundle, save_manifest

    for name, key in (("markup", "[/x]"), ("escape", "\x1b[31mred")):
        make_bundle(tmp_path / name, DenseCodec(), task="classification", vocab=3,
                    labels=["x", "y", "z"])
        m = load_manifest(tmp_path / name)
        m["producer"]["config"]["label_histogram"] = {key: 1, "x": 1, "y": 1, "z": 1}
        m["producer"]["config"]["round"] = "9" * 1_000  # (10,000 is over max_string_chars)
        save_manifest(tmp_path / name, m)
    result = run("aggregate", tmp_path / "markup", tmp_path / "escape", "--rule", "coverage",
                 "--out", tmp_path / "t")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "unknown: ['[/x]']" in result.stderr
    assert "\x1b" not in result.stderr and "unknown: ['\\x1b[31mred']" in result.stderr
    assert not (tmp_path / "t").exists()


def test_signed_bundles_through_the_cli(world, tmp_path):
    """fd keygen, emit-logits --sign-key, verify/aggregate/distill --trusted-keys."""
    keys, trusted = tmp_path / "keys", tmp_path / "trusted"
    result = run("keygen", "--out", keys, "--name", "client-0", "--json")
    assert result.exit_code == 0, result.output
    key_id = json.loads(result.stdout)["key_id"]
    trusted.mkdir()
    (trusted / "client-0.pub").write_bytes((keys / "client-0.pub").read_bytes())
    signed = tmp_path / "signed"
    result = run("emit-logits", world / "spec-0", world / "parts" / "proxy", "--out", signed,
                 "--sign-key", keys / "client-0.key")
    assert result.exit_code == 0, result.output
    assert "model.sig" in [p.name for p in signed.iterdir()]
    result = run("verify", signed, "--trusted-keys", trusted, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["signer"] == key_id
    result = run("aggregate", signed, "--out", tmp_path / "teacher", "--trusted-keys", trusted,
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clients"][0]["signer"] == key_id
    # the round-1 consensus of the fixture is unsigned: a student may not learn from it
    result = run("distill", world / "bert.json", world / "parts" / "proxy", world / "consensus",
                 "--out", tmp_path / "student", "--tokenizer", world / "tokenizer",
                 "--trusted-keys", trusted)
    assert result.exit_code == 1 and "unsigned (no model.sig)" in result.stderr
    assert not (tmp_path / "student").exists()
    # a round 2 specialist accepts the consensus only when the coordinator signed it
    common = ["--model", world / "spec-0", "--proxy", world / "parts" / "proxy", "--epochs", 1,
              "--tokenizer", world / "tokenizer", "--trusted-keys", trusted]
    result = run("train-specialist", world / "parts" / "client-0", "--teacher",
                 world / "consensus", "--out", tmp_path / "spec-2", *common)
    assert result.exit_code == 1 and "unsigned (no model.sig)" in result.stderr
    result = run("aggregate", signed, "--out", tmp_path / "signed-teacher", "--sign-key",
                 keys / "client-0.key")
    assert result.exit_code == 0, result.output
    result = run("train-specialist", world / "parts" / "client-0", "--teacher",
                 tmp_path / "signed-teacher", "--out", tmp_path / "spec-2", *common,
                 "--sign-key", keys / "client-0.key")
    assert result.exit_code == 0, result.output
    # the specialist and a student are signed model folders, in the OpenSSF format
    result = run("distill", world / "bert.json", world / "parts" / "proxy",
                 tmp_path / "signed-teacher", "--out", tmp_path / "student", "--tokenizer",
                 world / "tokenizer", "--epochs", 1, "--trusted-keys", trusted, "--sign-key",
                 keys / "client-0.key")
    assert result.exit_code == 0, result.output
    for model in (tmp_path / "spec-2", tmp_path / "student"):
        result = run("verify", model, "--trusted-keys", trusted, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"path": str(model), "ok": True, "problems": [],
                                             "signer": key_id, "kind": "model"}
    from .test_trust import _model_signing

    student = tmp_path / "student"
    ok = _model_signing("verify", "key", student, "--signature", student / "model.sig",
                        "--public_key", trusted / "client-0.pub")
    assert ok.returncode == 0, ok.stderr
    weights = student / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\1")
    bad = _model_signing("verify", "key", student, "--signature", student / "model.sig",
                         "--public_key", trusted / "client-0.pub")
    assert bad.returncode == 1 and "model.safetensors" in bad.stderr
    result = run("verify", student, "--trusted-keys", trusted)
    assert result.exit_code == 1 and "altered after it was signed" in result.stderr
    # an Ed25519 key signs bundles only, never a model folder
    run("keygen", "--out", keys, "--name", "old", "--algorithm", "ed25519")
    result = run("distill", world / "bert.json", world / "parts" / "proxy",
                 tmp_path / "signed-teacher", "--out", tmp_path / "student-2", "--tokenizer",
                 world / "tokenizer", "--epochs", 1, "--sign-key", keys / "old.key")
    assert result.exit_code == 1 and "an Ed25519 key signs bundles only" in result.stderr
    assert not (tmp_path / "student-2").exists()
