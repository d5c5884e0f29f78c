"""LoRA adapters and GGUF checkpoints on tiny models: a LoRA specialist and a LoRA student
through every command, adapter folders that name their base, merged weights, FedAvg of
adapters through Flower, a GGUF file written with the ``gguf`` package, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fdcli.adapters import AdapterError, LoraSpec, lora_spec, source_fingerprint
from fdcli.bundle import read_bundle
from fdcli.lm import load_lm, train_bpe_tokenizer

from .helpers import fd, fd_ok, write_tiny_gguf
from .test_token import _corpus, _write_jsonl

LEGAL = ["court", "ruling", "appeal", "judge", "statute", "party", "claim", "order"]
CLINIC = ["patient", "dose", "scan", "nurse", "ward", "fever", "blood", "chart"]
COMMON = ["--max-length", "32", "--epochs", "1", "--lr", "5e-3", "--batch-size", "8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Text of two institutions, a proxy and a test set; a tokenizer; a pretrained-like base
    folder (a tiny llama saved with save_pretrained) and a tiny GGUF file."""
    root = tmp_path_factory.mktemp("lora")
    _write_jsonl(root / "a.jsonl", _corpus(1, 24, LEGAL))
    _write_jsonl(root / "b.jsonl", _corpus(2, 24, CLINIC))
    proxy = _corpus(3, 12, LEGAL) + _corpus(4, 12, CLINIC)
    _write_jsonl(root / "proxy.jsonl", proxy)
    _write_jsonl(root / "test.jsonl", _corpus(5, 6, LEGAL) + _corpus(6, 6, CLINIC))
    train_bpe_tokenizer(proxy, root / "tok", vocab_size=300)
    (root / "llama.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 64}))
    lm = load_lm(root / "llama.json", tokenizer=root / "tok")
    lm.model.save_pretrained(str(root / "base"))
    lm.tokenizer.save_pretrained(str(root / "base"))
    write_tiny_gguf(root / "tiny.gguf", root / "tok")
    return root


def _meta(folder):
    return json.loads((folder / "fd.json").read_text())


def _weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_lora_specialist_and_student_through_every_command(world):
    w = world
    r = fd_ok("train-specialist", w / "a.jsonl", "--model", w / "base", "--task", "causal-lm",
              *COMMON, "--lora-rank", "4", "--out", w / "spec-a", "--json")
    assert json.loads(r.stdout)["task"] == "causal-lm"
    meta = _meta(w / "spec-a")
    # an adapter folder: peft's files, the tokenizer, fd.json naming the base
    assert (w / "spec-a" / "adapter_config.json").exists()
    assert not (w / "spec-a" / "model.safetensors").exists()
    assert meta["base_model"]["resolved"] == str((w / "base").resolve())
    assert meta["base_model"]["fingerprint"] == source_fingerprint(w / "base")
    assert meta["config"]["lora"] == {"rank": 4, "alpha": None, "dropout": 0.05,
                                      "targets": None, "kind": "lora", "quantize": None}
    # only the adapter trained: q_proj and v_proj (peft's llama default), rank 4
    shapes = {k.split("layers.0.")[1]: tuple(v.shape) for k, v in _weights(w / "spec-a").items()}
    assert shapes == {"self_attn.q_proj.lora_A.weight": (4, 32),
                      "self_attn.q_proj.lora_B.weight": (32, 4),
                      "self_attn.v_proj.lora_A.weight": (4, 32),
                      "self_attn.v_proj.lora_B.weight": (32, 4)}
    assert meta["trainable_parameters"] == 4 * 4 * 32
    assert any(float(v.abs().sum()) > 0 for k, v in _weights(w / "spec-a").items()
               if "lora_B" in k)  # B starts at zero: it moved
    # emit (the task comes from fd.json), aggregate, distill a LoRA student, evaluate
    fd_ok("emit-logits", w / "spec-a", w / "proxy.jsonl", "--max-length", "32", "--k", "8",
          "--out", w / "bundle-a")
    bundle = read_bundle(w / "bundle-a").manifest
    assert bundle.producer.model_fingerprint == meta["model_fingerprint"]
    fd_ok("train-specialist", w / "b.jsonl", "--model", w / "base", "--task", "causal-lm",
          *COMMON, "--lora-rank", "4", "--lora-type", "dora", "--lora-targets",
          "q_proj,k_proj,v_proj,o_proj", "--lora-alpha", "16", "--out", w / "spec-b")
    assert json.loads((w / "spec-b" / "adapter_config.json").read_text())["use_dora"] is True
    assert sorted(json.loads((w / "spec-b" / "adapter_config.json").read_text())
                  ["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    fd_ok("emit-logits", w / "spec-b", w / "proxy.jsonl", "--max-length", "32", "--k", "8",
          "--out", w / "bundle-b")
    fd_ok("aggregate", w / "bundle-a", w / "bundle-b", "--out", w / "teacher")
    fd_ok("distill", w / "base", w / "proxy.jsonl", w / "teacher", "--lora-rank", "4",
          "--epochs", "1", "--lr", "5e-3", "--out", w / "student")
    student = _meta(w / "student")
    assert student["stage"] == "distill" and student["base_model"]["fingerprint"] == \
        meta["base_model"]["fingerprint"]
    scores = {}
    for name in ("student", "spec-a", "base"):
        r = fd_ok("evaluate", w / name, w / "test.jsonl", "--task", "causal-lm",
                  "--max-length", "32", "--json")
        scores[name] = json.loads(r.stdout)["perplexity"]
    # base + adapter is not the base: the adapters changed what the model predicts
    assert scores["student"] != scores["base"] and scores["spec-a"] != scores["base"]


def test_adapter_loads_as_base_plus_adapter(world):
    """Loading an adapter folder equals the base with the adapter merged in."""
    w = world
    fd_ok("train-specialist", w / "a.jsonl", "--model", w / "base", "--task", "causal-lm",
          *COMMON, "--lora-rank", "2", "--out", w / "spec-m")
    fd_ok("train-specialist", w / "a.jsonl", "--model", w / "base", "--task", "causal-lm",
          *COMMON, "--lora-rank", "2", "--merge", "--out", w / "spec-merged")
    assert (w / "spec-merged" / "model.safetensors").exists()
    assert not (w / "spec-merged" / "adapter_config.json").exists()
    merged = _meta(w / "spec-merged")
    assert merged["merged_from"]["fingerprint"] == source_fingerprint(w / "base")
    ids = torch.tensor([[5, 9, 17, 40, 2, 88]])
    with torch.no_grad():
        a = load_lm(w / "spec-m").model(input_ids=ids).logits
        b = load_lm(w / "spec-merged").model(input_ids=ids).logits
        base = load_lm(w / "base").model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)  # same seed, same data: the same adapter
    assert not torch.allclose(a, base, atol=1e-4)


def test_adapter_whose_base_changed_or_moved_is_refused(world, tmp_path):
    w = world
    import shutil

    base = tmp_path / "base"
    shutil.copytree(w / "base", base)
    fd_ok("train-specialist", w / "a.jsonl", "--model", base, "--task", "causal-lm", *COMMON,
          "--lora-rank", "2", "--out", tmp_path / "spec")
    # the base's weights change under the adapter: refused, naming both fingerprints
    lm = load_lm(base)
    with torch.no_grad():
        lm.model.model.norm.weight.add_(1.0)
    lm.model.save_pretrained(str(base))
    r = fd("emit-logits", tmp_path / "spec", w / "proxy.jsonl", "--max-length", "32",
           "--out", tmp_path / "bundle")
    assert r.exit_code == 1 and "trained on a base model with fingerprint" in r.output
    assert not (tmp_path / "bundle").exists()
    # the base is gone: refused, naming the path
    shutil.rmtree(base)
    r = fd("evaluate", tmp_path / "spec", w / "test.jsonl", "--max-length", "32")
    assert r.exit_code == 1 and "is not on this machine" in r.output and str(base) in r.output


def test_gguf_loads_trains_and_saves_as_safetensors(world):
    w = world
    lm = load_lm(w / "tiny.gguf")
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.vocab_size == 300
    # the GGUF's own tokenizer is the one it was written from
    tok = load_lm(w / "base").tokenizer
    text = "court ruling on the patient's fever"
    assert lm.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    digest = __import__("hashlib").sha256((w / "tiny.gguf").read_bytes()).hexdigest()
    assert lm.fingerprint() == "sha256:" + digest
    # full fine-tuning from the GGUF file (the task is inferred from .gguf): safetensors out
    fd_ok("train-specialist", w / "a.jsonl", "--model", w / "tiny.gguf", *COMMON,
          "--out", w / "from-gguf")
    assert (w / "from-gguf" / "model.safetensors").exists()
    assert _meta(w / "from-gguf")["task"] == "causal-lm"
    # a LoRA adapter on the GGUF base: its fingerprint is the file's, checked on loading
    fd_ok("train-specialist", w / "a.jsonl", "--model", w / "tiny.gguf", *COMMON,
          "--lora-rank", "2", "--out", w / "gguf-lora")
    assert _meta(w / "gguf-lora")["base_model"]["fingerprint"] == "sha256:" + digest
    r = fd_ok("emit-logits", w / "gguf-lora", w / "proxy.jsonl", "--max-length", "32",
              "--out", w / "gguf-bundle", "--json")
    assert json.loads(r.stdout)["rows"] > 0


def test_a_gguf_language_model_classifies_text_with_lora_and_dp(world, tmp_path):
    """A GGUF file as a text classifier's base: a fresh head over the data's labels, a LoRA
    adapter, trained plainly and with DP-SGD; the DP causal LM on the same base too."""
    import csv

    w = world
    rows = [{"text": t, "label": name} for name, words, seed in (
        ("legal", LEGAL, 7), ("clinic", CLINIC, 8)) for t in _corpus(seed, 20, words)]
    with (tmp_path / "labelled.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    common = ["--task", "classification", "--model", w / "tiny.gguf", "--lora-rank", "2",
              "--epochs", "2", "--lr", "5e-3", "--batch-size", "8"]
    fd_ok("train-specialist", tmp_path / "labelled.csv", *common, "--out", tmp_path / "clf")
    meta = _meta(tmp_path / "clf")
    assert meta["label_names"] == ["clinic", "legal"] and meta["architecture"] == "llama"
    assert meta["base_model"]["fingerprint"] == source_fingerprint(w / "tiny.gguf")
    r = fd_ok("evaluate", tmp_path / "clf", tmp_path / "labelled.csv", "--json")
    assert json.loads(r.stdout)["accuracy"] > 0.9  # its own training text, two easy classes
    # a causal LM's model folder is a classifier's base too
    fd_ok("train-specialist", tmp_path / "labelled.csv", *common[:2], "--model", w / "base",
          *common[4:], "--out", tmp_path / "clf-folder")
    assert _meta(tmp_path / "clf-folder")["base_model"]["path"] == str(w / "base")
    fd_ok("train-specialist", tmp_path / "labelled.csv", *common, "--dp-epsilon", "8",
          "--out", tmp_path / "clf-dp")
    g = _meta(tmp_path / "clf-dp")["privacy"]
    assert 4 < g["epsilon"] <= 8 and g["privacy_unit"].startswith("one training example")
    # only the adapter and the head trained, and under DP: the base is untouched
    fd_ok("train-specialist", w / "a.jsonl", "--model", w / "tiny.gguf", "--task",
          "causal-lm", *COMMON, "--lora-rank", "2", "--dp-epsilon", "8",
          "--out", tmp_path / "lm-dp")
    meta = _meta(tmp_path / "lm-dp")
    assert meta["privacy"]["epsilon"] <= 8 and "base_model" in meta
    assert meta["trainable_parameters"] < meta["parameters"]


def test_fedavg_of_lora_adapters_through_flower(world, tmp_path):
    from fdcli.stages.lora_fedavg import fedavg_lora

    w = world
    meta = fedavg_lora(w / "base", [w / "a.jsonl", w / "b.jsonl"], tmp_path / "fed",
                       spec=LoraSpec(2), rounds=2, local_epochs=0.5, max_length=32,
                       learning_rate=5e-3)
    traffic = meta["metrics"]["traffic"]
    assert [t["round"] for t in traffic] == [1, 2] and all(t["clients"] == 2 for t in traffic)
    # what crosses the wire is the adapter: 4 fp32 arrays of 2 x 32, plus framing
    adapter_bytes = 4 * 2 * 32 * 4
    assert adapter_bytes < traffic[0]["max_up_bytes_per_client"] < adapter_bytes + 2048
    assert meta["metrics"]["uploaded_bytes"] == sum(t["up_bytes"] for t in traffic)
    assert (tmp_path / "fed" / "adapter_model.safetensors").exists()
    r = fd_ok("evaluate", tmp_path / "fed", w / "test.jsonl", "--max-length", "32", "--json")
    assert json.loads(r.stdout)["tokens"] > 0


@pytest.mark.parametrize("args, message", [
    (["--merge"], "--merge applies to a LoRA model"),
    (["--lora-alpha", "8"], "--lora-alpha applies only with --lora-rank"),
    (["--lora-rank", "0"], "--lora-rank must be a whole number of at least 1, got 0"),
    (["--lora-rank", "2", "--lora-type", "vera"], "--lora-type must be one of"),
    (["--lora-rank", "2", "--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1)"),
    (["--lora-rank", "2", "--quantize", "4bit"], "needs a CUDA GPU"),
    (["--lora-rank", "2", "--lora-targets", "nope_proj"], "--lora-targets"),
])
def test_lora_options_refused_by_name(world, tmp_path, args, message):
    if "--quantize" in args and torch.cuda.is_available():
        pytest.skip("a GPU is here: QLoRA is allowed")
    r = fd("train-specialist", world / "a.jsonl", "--model", world / "base", "--task",
           "causal-lm", *COMMON, *args, "--out", tmp_path / "x")
    assert r.exit_code == 1, r.output
    assert message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and not (tmp_path / "x").exists()


def test_lora_refused_for_a_config_file_and_for_an_adapter(world, tmp_path):
    r = fd("train-specialist", world / "a.jsonl", "--model", world / "llama.json",
           "--tokenizer", world / "tok", "--task", "causal-lm", *COMMON, "--lora-rank", "2",
           "--out", tmp_path / "x")
    assert r.exit_code == 1 and "random weights" in r.output
    fd_ok("train-specialist", world / "a.jsonl", "--model", world / "base", "--task",
          "causal-lm", *COMMON, "--lora-rank", "2", "--out", tmp_path / "ad")
    r = fd("train-specialist", world / "a.jsonl", "--model", tmp_path / "ad", *COMMON,
           "--lora-rank", "2", "--out", tmp_path / "y")
    assert r.exit_code == 1 and "an adapter folder already" in r.output
    # without LoRA options an adapter folder continues training its own adapter
    fd_ok("train-specialist", world / "a.jsonl", "--model", tmp_path / "ad", *COMMON,
          "--out", tmp_path / "ad2")
    before, after = _weights(tmp_path / "ad"), _weights(tmp_path / "ad2")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_lora_spec_library():
    assert lora_spec(None) is None
    spec = lora_spec(8, targets="q_proj, v_proj")
    assert spec.targets == ("q_proj", "v_proj") and spec.dropout == 0.05
    with pytest.raises(AdapterError, match="--lora-type"):
        lora_spec(None, kind="dora")


def test_lora_classifier_specialist_round_and_student(tmp_path):
    """A LoRA text classifier: the adapter carries the head, emits, is distilled into, and
    continues its own adapter in round 2."""
    import random

    from fdcli.models import load_classifier, train_word_tokenizer

    pos, neg = ["good", "great", "fine", "happy"], ["bad", "awful", "sad", "poor"]

    def rows(n, seed):
        r = random.Random(seed)
        out = []
        for _ in range(n):
            y = r.randint(0, 1)
            words = (pos if y else neg) + ["the", "a", "movie"]
            out.append({"text": " ".join(r.choice(words) for _ in range(8)),
                        "label": ["neg", "pos"][y]})
        return out

    for name, seed, n in (("a", 1, 48), ("proxy", 3, 24), ("test", 4, 24)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n"
                                                        for x in rows(n, seed)))
    train_word_tokenizer([x["text"] for x in rows(80, 9)], tmp_path / "tok")
    (tmp_path / "bert.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}))
    clf = load_classifier(tmp_path / "bert.json", "text", ["neg", "pos"],
                          tokenizer=tmp_path / "tok")
    clf.model.save_pretrained(str(tmp_path / "base"))
    clf.processor.save_pretrained(str(tmp_path / "base"))
    t = tmp_path
    fd_ok("train-specialist", t / "a.jsonl", "--model", t / "base", "--lora-rank", "4",
          "--epochs", "3", "--lr", "5e-3", "--out", t / "spec")
    weights = _weights(t / "spec")
    assert any(k.endswith("classifier.weight") for k in weights)  # the head trains and saves
    assert any("query.lora_A" in k for k in weights)  # peft's bert default: query, value
    assert _meta(t / "spec")["label_names"] == ["neg", "pos"]
    fd_ok("emit-logits", t / "spec", t / "proxy.jsonl", "--out", t / "bundle")
    fd_ok("aggregate", t / "bundle", "--out", t / "teacher")
    fd_ok("train-specialist", t / "a.jsonl", "--model", t / "spec", "--teacher", t / "teacher",
          "--proxy", t / "proxy.jsonl", "--epochs", "1", "--lr", "5e-3", "--out", t / "spec-2")
    assert _meta(t / "spec-2")["round"] == 2 and (t / "spec-2" / "adapter_config.json").exists()
    fd_ok("distill", t / "base", t / "proxy.jsonl", t / "teacher", "--lora-rank", "4",
          "--merge", "--epochs", "3", "--lr", "5e-3", "--out", t / "student")
    assert (t / "student" / "model.safetensors").exists()
    acc = {m: json.loads(fd_ok("evaluate", t / m, t / "test.jsonl", "--json").stdout)
           ["accuracy"] for m in ("spec", "base")}
    assert acc["spec"] > acc["base"]


def test_a_hostile_base_model_record_is_refused_by_field(world, tmp_path):
    import shutil

    fd_ok("train-specialist", world / "a.jsonl", "--model", world / "base", "--task",
          "causal-lm", *COMMON, "--lora-rank", "2", "--out", tmp_path / "ad")
    meta = _meta(tmp_path / "ad")
    for bad in ({"path": 7, "fingerprint": "x"}, "base", {"path": "p"}):
        shutil.rmtree(tmp_path / "bundle", ignore_errors=True)
        (tmp_path / "ad" / "fd.json").write_text(json.dumps(meta | {"base_model": bad}))
        r = fd("emit-logits", tmp_path / "ad", world / "proxy.jsonl", "--max-length", "32",
               "--out", tmp_path / "bundle")
        assert r.exit_code == 1 and "field 'base_model'" in r.output, r.output
        assert not (tmp_path / "bundle").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU")
def test_qlora_on_a_gpu(world, tmp_path):
    pytest.importorskip("bitsandbytes")
    fd_ok("train-specialist", world / "a.jsonl", "--model", world / "base", "--task",
          "causal-lm", *COMMON, "--lora-rank", "2", "--quantize", "4bit",
          "--out", tmp_path / "q")
    assert _meta(tmp_path / "q")["config"]["lora"]["quantize"] == "4bit"
    fd_ok("evaluate", tmp_path / "q", world / "test.jsonl", "--max-length", "32")


def test_missing_optional_libraries_are_named(world, tmp_path, monkeypatch):
    """Without peft or gguf installed, fd names the library and the extra to install."""
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    r = fd("evaluate", world / "tiny.gguf", world / "test.jsonl", "--max-length", "32")
    assert r.exit_code == 1 and "needs the gguf library" in r.output
    assert "pip install 'fdcli[llm]'" in r.output
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    r = fd("train-specialist", world / "a.jsonl", "--model", world / "base", "--task",
           "causal-lm", *COMMON, "--lora-rank", "2", "--out", tmp_path / "x")
    assert r.exit_code == 1 and "needs the peft library" in r.output
    assert not (tmp_path / "x").exists()
