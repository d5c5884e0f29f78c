"""The five stages end to end through the CLI, on tiny random-init models: text (a generated
CSV, a tiny BERT) and images (digits through fd simulate), plus every bad-input path."""

from __future__ import annotations

import json
import random
import re

import pytest

from fdcli.bundle import read_bundle, verify_bundle
from fdcli.models import train_word_tokenizer

from .helpers import fd as run

LABELS = ["billing", "outage", "praise"]
WORDS = {"billing": ["invoice", "charge", "refund", "payment"],
         "outage": ["down", "offline", "error", "crash"],
         "praise": ["great", "thanks", "love", "excellent"]}


def make_csv(path, n, seed, labels=LABELS):
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(n):
        label = rng.choice(labels)
        words = rng.sample(WORDS.get(label, ["zebra", "stripes"]), 2) + rng.sample(
            ["the", "service", "today", "my", "account", "is"], 3)
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def text_recipe(root, n, seed, layers):
    """A labelled CSV of ``n`` tickets (all.csv), a word tokenizer trained on its texts and a
    tiny BERT config with ``layers`` layers (bert.json), in ``root``."""
    make_csv(root / "all.csv", n, seed=seed)
    texts = [line.split(",")[0] for line in (root / "all.csv").read_text().splitlines()[1:]]
    train_word_tokenizer(texts, root / "tokenizer")
    (root / "bert.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": layers,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}))


@pytest.fixture(scope="module")
def text_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    text_recipe(root, 240, seed=1, layers=2)
    result = run("partition", root / "all.csv", "--num-clients", 2, "--alpha", 1.0,
                 "--validation-fraction", 0, "--out", root / "parts", "--json")
    assert result.exit_code == 0, result.output
    sizes = json.loads(result.stdout)
    assert sizes["test"] == 48 and sizes["proxy"] == 48 and sum(sizes["clients"]) == 144
    assert sizes["validation"] == 0 and not (root / "parts" / "validation").exists()
    common = ["--tokenizer", root / "tokenizer", "--epochs", 20, "--lr", 3e-3]
    for i in range(2):
        result = run("train-specialist", root / "parts" / f"client-{i}", "--model",
                     root / "bert.json", "--out", root / f"spec-{i}", *common, "--json")
        assert result.exit_code == 0, result.output
        result = run("emit-logits", root / f"spec-{i}", root / "parts" / "proxy",
                     "--out", root / f"bundle-{i}", "--json")
        assert result.exit_code == 0, result.output
    result = run("aggregate", root / "bundle-0", root / "bundle-1", "--out", root / "teacher",
                 "--json")
    assert result.exit_code == 0, result.output
    result = run("distill", root / "bert.json", root / "parts" / "proxy", root / "teacher",
                 "--out", root / "student", *common, "--json")
    assert result.exit_code == 0, result.output
    return root


def test_text_specialist_artifacts(text_world):
    meta = json.loads((text_world / "spec-0" / "fd.json").read_text())
    assert meta["label_names"] == LABELS
    assert sum(meta["label_histogram"].values()) == meta["train_examples"] > 0
    assert meta["config"]["epochs"] == 20 and meta["config"]["seed"] == 0
    assert meta["model_fingerprint"].startswith("sha256:")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(text_world / "spec-0")
    tok = AutoTokenizer.from_pretrained(text_world / "spec-0")
    logits = model(**tok(["refund my invoice"], return_tensors="pt")).logits
    assert logits.shape == (1, 3)
    assert model.config.id2label == {0: "billing", 1: "outage", 2: "praise"}


def test_text_bundles_and_aggregate(text_world):
    for name in ("bundle-0", "bundle-1", "teacher"):
        assert verify_bundle(text_world / name).ok
    b = read_bundle(text_world / "bundle-0").manifest
    assert b.task == "classification" and b.examples == 48
    assert b.label_space["names"] == LABELS
    ids = [json.loads((text_world / f"spec-{i}" / "fd.json").read_text())["client_id"]
           for i in (0, 1)]  # drawn by train-specialist: no --client-id was given
    assert all(re.fullmatch(rf"spec-{i}-[0-9a-f]{{6}}", cid) for i, cid in enumerate(ids)), ids
    assert b.producer.client_id == ids[0]
    t = read_bundle(text_world / "teacher").manifest
    assert t.proxy_fingerprint == b.proxy_fingerprint
    assert [p["client_id"] for p in t.provenance] == ids
    assert t.producer.config["rule"] == "confidence"
    assert all(len(p["manifest_sha256"]) == 64 for p in t.provenance)


def test_text_student_learns_and_evaluates(text_world):
    result = run("evaluate", text_world / "student", text_world / "parts" / "test", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["examples"] == 48
    assert set(scores) >= {"accuracy", "macro_f1", "nll", "ece"}
    assert scores["accuracy"] > 0.6  # keywords decide the label; chance is 1/3
    assert 0 <= scores["ece"] <= 1 and scores["nll"] > 0


def test_image_federation_through_simulate(tmp_path):
    out = tmp_path / "sim"
    result = run("simulate", "--out", out, "--num-clients", 2, "--epochs", 3,
                 "--distill-epochs", 3, "--rounds", 1, "--rule", "confidence",
                 "--compare-rules", "mean", "--baselines", "centralized",
                 "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results == json.loads((out / "results.json").read_text())
    assert [s["architecture"] for s in results["specialists"]] == ["vit", "resnet"]
    for s in results["specialists"]:
        assert 0 <= s["accuracy"] <= 1 and 0 <= s["macro_f1"] <= 1
        assert s["uploaded_bytes"] == sum(
            p.stat().st_size for p in (out / "bundles" / s["client_id"]).iterdir())
    assert results["bytes"]["fd"]["uploaded_total"] == sum(
        results["bytes"]["fd"]["uploaded_per_client"])
    assert set(results["students_by_rule"]) == {"confidence", "mean"}
    assert results["student"] == results["students_by_rule"]["confidence"]
    assert 0 <= results["centralized"]["accuracy"] <= 1
    assert verify_bundle(out / "teachers" / "confidence").ok
    assert (out / "students" / "confidence" / "config.json").exists()
    privacy = results["privacy"]
    assert [p["client_id"] for p in privacy["specialists"]] == ["client-0", "client-1"]
    sizes = results["partition"]["sizes"]
    for p, n in zip(privacy["specialists"], sizes["clients"]):
        assert (p["members"], p["nonmembers"]) == (n, sizes["test"])
        assert 0 < p["nonmembers_effective"] <= sizes["test"]
        assert 0 <= p["auc"] <= 1 and 0 <= p["reference"]["auc"] <= 1
    assert privacy["student"]["members"] == sum(sizes["clients"])
    for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr"):
        assert key in privacy["student"] and key in privacy["centralized"]


# -- bad input: exit 1, a clear message, no partial output -------------------------------
def expect_failure(args, fragment, out):
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_missing_column(text_world, tmp_path):
    expect_failure(["train-specialist", text_world / "all.csv", "--model", text_world /
                    "bert.json", "--text-column", "body", "--out", tmp_path / "m"],
                   "text column 'body' not found", tmp_path / "m")


def test_unknown_label(text_world, tmp_path):
    bad = make_csv(tmp_path / "bad.csv", 10, seed=3, labels=["billing", "zebra"])
    expect_failure(["evaluate", text_world / "spec-0", bad], "label(s) ['zebra'] not in the "
                   "label space ['billing', 'outage', 'praise']", tmp_path / "none")


def test_label_space_differs_between_bundles(text_world, tmp_path):
    import shutil

    other = tmp_path / "other.csv"
    make_csv(other, 30, seed=4, labels=["billing", "outage"])
    # a model fd trained keeps its label space (data may lack labels), but not a foreign one
    foreign = make_csv(tmp_path / "foreign.csv", 30, seed=4, labels=["billing", "zebra"])
    expect_failure(["train-specialist", foreign, "--model", text_world / "spec-0",
                    "--out", tmp_path / "m"], "label(s) ['zebra'] not in the label space",
                   tmp_path / "m")
    expect_failure(["train-specialist", other, "--model", text_world / "spec-0",
                    "--labels", "billing,outage", "--out", tmp_path / "m"],
                   "differs from the data's", tmp_path / "m")
    run("train-specialist", other, "--model", text_world / "bert.json", "--tokenizer",
        text_world / "tokenizer", "--epochs", 1, "--out", tmp_path / "m2")
    run("emit-logits", tmp_path / "m2", text_world / "parts" / "proxy", "--out",
        tmp_path / "b2")
    expect_failure(["aggregate", text_world / "bundle-0", tmp_path / "b2", "--out",
                    tmp_path / "t"], "label_space.fingerprint", tmp_path / "t")
    shutil.rmtree(tmp_path / "m2")


def test_declared_labels_cover_a_client_that_lacks_some(text_world, tmp_path):
    partial = make_csv(tmp_path / "partial.csv", 30, seed=5, labels=["billing", "praise"])
    result = run("train-specialist", partial, "--model", text_world / "bert.json",
                 "--tokenizer", text_world / "tokenizer", "--epochs", 1,
                 "--labels", ",".join(LABELS), "--out", tmp_path / "m", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m" / "fd.json").read_text())
    assert meta["label_names"] == LABELS
    assert meta["label_histogram"]["outage"] == 0
    expect_failure(["train-specialist", partial, "--model", text_world / "bert.json",
                    "--tokenizer", text_world / "tokenizer", "--labels", "billing,outage",
                    "--out", tmp_path / "m2"], "label(s) ['praise'] not in the label space",
                   tmp_path / "m2")


def test_proxy_differs_from_the_bundle(text_world, tmp_path):
    other = make_csv(tmp_path / "proxy2.csv", 48, seed=9)
    expect_failure(["distill", text_world / "bert.json", other, text_world / "teacher",
                    "--tokenizer", text_world / "tokenizer", "--out", tmp_path / "s"],
                   "this proxy dataset differs from the one", tmp_path / "s")


def test_output_exists(text_world, tmp_path):
    (tmp_path / "taken").mkdir()
    result = run("emit-logits", text_world / "spec-0", text_world / "parts" / "proxy",
                 "--out", tmp_path / "taken")
    assert result.exit_code == 1 and "output already exists" in result.stderr
    assert list((tmp_path / "taken").iterdir()) == []


def test_empty_dataset(text_world, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    expect_failure(["train-specialist", empty, "--model", text_world / "bert.json",
                    "--out", tmp_path / "m"], "the dataset is empty", tmp_path / "m")


def test_model_dir_that_is_not_a_model(text_world, tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "weights.bin").write_bytes(b"\0")
    expect_failure(["train-specialist", text_world / "all.csv", "--model",
                    tmp_path / "notamodel", "--out", tmp_path / "m"],
                   "not a model directory", tmp_path / "m")


def test_validation_split_hard_labels_and_a_topk_teacher(text_world, tmp_path):
    result = run("train-specialist", text_world / "parts" / "client-0", "--model",
                 text_world / "bert.json", "--tokenizer", text_world / "tokenizer", "--epochs", 2,
                 "--val-fraction", 0.25, "--out", tmp_path / "v", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "v" / "fd.json").read_text())
    assert meta["val_examples"] > 0 and 0 <= meta["metrics"]["val_accuracy"] <= 1
    sizes = json.loads((text_world / "parts" / "partition.json").read_text())["sizes"]
    assert meta["train_examples"] + meta["val_examples"] == sizes["clients"][0]
    assert meta["val_examples"] == round(sizes["clients"][0] * 0.25)
    # a top-k teacher goes straight to distill (tail-bucket loss), mixed with hard labels
    result = run("emit-logits", text_world / "spec-0", text_world / "parts" / "proxy-labels",
                 "--encoding", "topk", "--k", 2, "--out", tmp_path / "topk", "--json")
    assert result.exit_code == 0, result.output
    m = read_bundle(tmp_path / "topk").manifest
    assert m.encoding["name"] == "topk" and m.encoding["k"] == 2
    assert m.fidelity["mean_truncation_kl_nats"] is not None
    result = run("distill", text_world / "bert.json", text_world / "parts" / "proxy-labels",
                 tmp_path / "topk", "--tokenizer", text_world / "tokenizer", "--epochs", 2,
                 "--hard-weight", 0.5, "--out", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "s" / "fd.json").read_text())
    assert meta["config"]["hard_weight"] == 0.5 and meta["proxy_examples"] == 48
    # hard labels need a labelled proxy
    expect_failure(["distill", text_world / "bert.json", text_world / "parts" / "proxy",
                    tmp_path / "topk", "--tokenizer", text_world / "tokenizer",
                    "--hard-weight", 0.5, "--out", tmp_path / "s2"], "no label column found",
                   tmp_path / "s2")
