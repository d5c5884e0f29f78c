"""Differential privacy: DP-SGD specialists (Opacus), what their bundles carry and disclose,
the rules that refuse them, and the privacy-utility trade-off of fd simulate."""

from __future__ import annotations

import json

import pytest

from fdcli.dp import DPSettings, PrivacyError, noise_for, spent

from .helpers import fd, fd_ok


def test_noise_is_the_smallest_that_keeps_the_budget():
    dp = DPSettings(4.0, 1e-5)
    sigma = noise_for(dp, 0.25, 200)
    assert spent([[sigma, 0.25, 200]], 1e-5) <= 4.0
    assert spent([[sigma * 0.99, 0.25, 200]], 1e-5) > 4.0  # less noise would overspend
    # more steps at the same budget need more noise; a prior run leaves less to spend
    assert noise_for(dp, 0.25, 800) > sigma
    later = noise_for(dp, 0.25, 200, prior=[[sigma, 0.25, 100]])
    assert later > sigma
    assert spent([[sigma, 0.25, 100], [later, 0.25, 200]], 1e-5) <= 4.0
    with pytest.raises(PrivacyError, match="already spent epsilon .* a target of 1 leaves"):
        noise_for(DPSettings(1.0), 0.25, 10, prior=[[0.5, 0.25, 1000]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(epsilon=0.0), "dp_epsilon must be a positive number, got 0.0"),
    (dict(epsilon=float("inf")), "dp_epsilon must be a positive number"),
    (dict(epsilon=1.0, delta=1.0), "dp_delta must be in (0, 1), got 1.0"),
    (dict(epsilon=1.0, max_grad_norm=-1.0), "max_grad_norm must be a positive number"),
])
def test_settings_refuse_what_is_not_a_guarantee(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DPSettings(**kwargs)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from fdcli.stages.simulate import ARCHITECTURES, digits_dataset

    root = tmp_path_factory.mktemp("dp")
    ds = digits_dataset().shuffle(seed=0)
    ds.select(range(0, 200)).save_to_disk(str(root / "private"))
    ds.select(range(200, 300)).save_to_disk(str(root / "proxy"))
    for arch in ("vit", "resnet"):
        (root / f"{arch}.json").write_text(json.dumps(ARCHITECTURES[arch]))
    return root


def _dp_train(root, out, *extra):
    return fd("train-specialist", root / "private", "--model", root / "vit.json", "--out",
              root / out, "--epochs", 2, "--batch-size", 32, "--json", *extra)


def test_dp_specialist_records_its_guarantee_and_its_bundle_carries_it(digits):
    root = digits
    r = _dp_train(root, "dp", "--dp-epsilon", 3, "--dp-delta", 1e-4, "--max-grad-norm", 0.5)
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    meta = json.loads((root / "dp" / "fd.json").read_text())
    g = meta["privacy"]
    assert printed["dp_epsilon"] == g["epsilon"] and printed["dp_delta"] == 1e-4
    assert 1.5 < g["epsilon"] <= 3.0 and g["target_epsilon"] == 3.0
    assert (g["delta"], g["max_grad_norm"], g["accountant"]) == (1e-4, 0.5, "rdp")
    assert g["sample_rate"] == pytest.approx(1 / 7)  # 200 examples in batches of about 32
    assert g["steps"] == 14 and len(g["history"]) == 1
    assert g["history"][0] == [g["noise_multiplier"], g["sample_rate"], g["steps"]]
    assert g["epsilon"] == pytest.approx(spent(g["history"], 1e-4), abs=1e-3)
    assert meta["config"]["dp_epsilon"] == 3.0
    # the bundle repeats the guarantee and leaves out the example count
    fd_ok("emit-logits", root / "dp", root / "proxy", "--out", root / "dp-bundle")
    config = json.loads((root / "dp-bundle" / "manifest.json").read_text())["producer"]["config"]
    assert config["privacy"] == g and config["train_examples"] is None
    # counts are outside the guarantee: refused, nothing written
    r = fd("emit-logits", root / "dp", root / "proxy", "--out", root / "counted",
           "--declare-label-counts")
    assert r.exit_code == 1 and not (root / "counted").exists()
    assert "would disclose the training label histogram of a DP model" in \
        " ".join(r.stderr.split())
    # training the DP model again composes with what it spent; a spent budget refuses
    fd_ok("train-specialist", root / "private", "--model", root / "dp", "--out",
          root / "dp-more", "--epochs", 1, "--batch-size", 32, "--dp-epsilon", 6,
          "--dp-delta", 1e-4)
    more = json.loads((root / "dp-more" / "fd.json").read_text())["privacy"]
    assert more["history"][0] == g["history"][0] and len(more["history"]) == 2
    assert g["epsilon"] < more["epsilon"] <= 6.0
    r = fd("train-specialist", root / "private", "--model", root / "dp", "--out",
           root / "dp-none", "--dp-epsilon", 1, "--dp-delta", 1e-4)
    assert r.exit_code == 1 and not (root / "dp-none").exists()
    assert "already spent epsilon" in r.stderr


def test_dp_training_is_deterministic_and_noisier_than_plain_training(digits):
    import torch
    from safetensors.torch import load_file

    root = digits
    for out in ("a", "b"):
        assert _dp_train(root, out, "--dp-epsilon", 2).exit_code == 0
    fd_ok("train-specialist", root / "private", "--model", root / "vit.json", "--out",
          root / "plain", "--epochs", 2, "--batch-size", 32)
    a, b, plain = (load_file(str(root / n / "model.safetensors")) for n in ("a", "b", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.allclose(a[k], plain[k]) for k in a)


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet.json", "--dp-epsilon", "2"],
     "DP-SGD cannot train a model with BatchNorm (7 layers, e.g. "
     "resnet.embedder.embedder.normalization)"),
    (["--model", "vit.json", "--dp-delta", "1e-6"],
     "dp_delta and max_grad_norm apply to DP-SGD training; give dp_epsilon too"),
    (["--model", "vit.json", "--dp-epsilon", "-1"], "dp_epsilon must be a positive number"),
    (["--model", "vit.json", "--dp-epsilon", "2", "--teacher", "t", "--proxy", "p"],
     "--dp-epsilon with --teacher: digesting a consensus under DP-SGD is not built"),
])
def test_dp_refusals_name_the_reason(digits, args, message):
    args = [digits / a if a.endswith(".json") else a for a in args]
    r = fd("train-specialist", digits / "private", "--out", digits / "refused", *args)
    assert r.exit_code == 1, r.output
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.output and not (digits / "refused").exists()


def test_seq2seq_refuses_dp_by_name(tmp_path):
    r = fd("train-specialist", tmp_path / "pairs.jsonl", "--model", tmp_path / "t5.json",
           "--task", "seq2seq", "--out", tmp_path / "s2s", "--dp-epsilon", 2)
    assert r.exit_code == 1 and not (tmp_path / "s2s").exists()
    told = " ".join(r.stderr.split())
    assert "--dp-epsilon does not apply to --task seq2seq (--dp-epsilon: DP-SGD is not built " \
        "for encoder-decoders: T5's relative_attention_bias" in told, told


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_each_block_gets_its_own_gradient_under_dp(model_type):
    """What DP-SGD clips is each block's own gradient: Opacus's per-example gradients of
    next_token_loss over a batch equal each block's gradient computed alone (GPT-2 only
    with its positions given per example)."""
    import torch
    from opacus import GradSampleModule
    from transformers import AutoConfig, AutoModelForCausalLM

    from fdcli.dp import next_token_loss
    from fdcli.lm import pad_blocks

    extra = {"n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 16, "resid_pdrop": 0,
             "embd_pdrop": 0, "attn_pdrop": 0} \
        if model_type == "gpt2" else {"hidden_size": 16, "intermediate_size": 32,
                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "num_key_value_heads": 2, "max_position_embeddings": 16}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        model_type, vocab_size=40, **extra)).train()
    blocks = [[1, 5, 7, 9, 2, 3], [4, 4, 8], [6, 7, 8, 9, 10]]
    batch = pad_blocks(blocks, 0)
    ids = batch["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"],
              "position_ids": torch.arange(ids.shape[1]).expand_as(ids).contiguous()}
    targets = batch["next_ids"].masked_fill(~batch["row_mask"], -100)
    loss = next_token_loss(40)
    wrapped = GradSampleModule(model)
    loss(wrapped, inputs, targets).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    samples = {n: p.grad_sample.clone() for n, p in params}
    wrapped._close()
    for i in range(len(blocks)):
        model.zero_grad()
        one = {k: v[i:i + 1] for k, v in inputs.items()}
        loss(model, one, targets[i:i + 1]).backward()
        for n, p in params:
            assert torch.allclose(samples[n][i], p.grad, atol=1e-5), (n, i)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    from fdcli.lm import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("dp-lm")
    words = ["court", "ruling", "appeal", "judge", "patient", "dose", "scan", "ward"]
    docs = [" ".join(words[(i * 7 + j * 3) % 8] for j in range(30 + i % 20)) + "."
            for i in range(60)]
    (root / "private.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                                for d in docs[:48]))
    (root / "proxy.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                              for d in docs[48:]))
    train_bpe_tokenizer(docs, root / "tok", vocab_size=120)
    (root / "gpt2.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}))
    return root


def _dp_lm(root, out, *extra):
    return fd("train-specialist", root / "private.jsonl", "--model", root / "gpt2.json",
              "--tokenizer", root / "tok", "--task", "causal-lm", "--max-length", 16,
              "--epochs", 1, "--batch-size", 8, "--out", root / out, "--json", *extra)


def test_dp_causal_lm_specialist_records_its_unit_and_its_bundle_carries_it(texts):
    root = texts
    r = _dp_lm(root, "dp", "--dp-epsilon", 4, "--dp-delta", 1e-4)
    assert r.exit_code == 0, r.output
    meta = json.loads((root / "dp" / "fd.json").read_text())
    g = meta["privacy"]
    assert json.loads(r.stdout)["dp_epsilon"] == g["epsilon"] and 2 < g["epsilon"] <= 4.0
    assert g["privacy_unit"].startswith("one block of at most 16 tokens of one document")
    # 30-49 words and a period per document, cut alone: every document makes 2 or more
    # blocks of 16 tokens, and no block holds two (each block's first token starts a word)
    assert g["blocks_per_document"] >= 2
    assert meta["train_examples"] >= 2 * 48 and meta["config"]["dp_epsilon"] == 4.0
    fd_ok("emit-logits", root / "dp", root / "proxy.jsonl", "--max-length", 16, "--out",
          root / "dp-bundle")
    config = json.loads((root / "dp-bundle" / "manifest.json").read_text())["producer"]["config"]
    assert config["privacy"] == g
    assert config["train_examples"] is None and config["train_tokens"] is None
    # without packing each document is one (truncated) block: the unit is the document
    r = _dp_lm(root, "dp-doc", "--dp-epsilon", 4, "--no-packing")
    assert r.exit_code == 0, r.output
    g = json.loads((root / "dp-doc" / "fd.json").read_text())["privacy"]
    assert g["privacy_unit"].startswith("one document") and g["blocks_per_document"] == 1
    assert json.loads((root / "dp-doc" / "fd.json").read_text())["train_examples"] == 48


def test_dp_blocks_never_span_documents(texts):
    from fdcli.data import load_local
    from fdcli.lm import load_lm, text_blocks

    lm = load_lm(texts / "gpt2.json", tokenizer=texts / "tok")
    ds = load_local(texts / "private.jsonl")
    packed = text_blocks(ds, "x", lm.tokenizer, max_length=16)
    alone = text_blocks(ds, "x", lm.tokenizer, max_length=16, per_document=True)
    eos = lm.tokenizer.eos_token_id
    assert packed.blocks_per_document is None
    # each document's tokens and its end-of-text token, cut every 16, nothing else
    docs = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
            for t in ds["text"]]
    expected = [d[i:i + 16] for d in docs for i in range(0, len(d), 16) if len(d[i:i + 16]) > 1]
    assert alone.blocks == expected
    assert alone.blocks_per_document == max(-(-len(d) // 16) for d in docs)
    assert sum(len(b) for b in packed.blocks) == sum(len(d) for d in docs)


def test_count_rules_refuse_dp_bundles_and_the_consensus_names_the_guarantees(digits):
    root = digits
    for i in (1, 2):
        assert _dp_train(root, f"m{i}", "--dp-epsilon", 4, "--seed", i, "--client-id",
                         f"site-{i}").exit_code == 0
        fd_ok("emit-logits", root / f"m{i}", root / "proxy", "--out", root / f"b{i}")
    for rule, what in (("weighted", "train_examples"), ("coverage", "label_histogram")):
        r = fd("aggregate", root / "b1", root / "b2", "--rule", rule, "--out", root / rule)
        assert r.exit_code == 1 and not (root / rule).exists()
        text = " ".join(r.stderr.split())
        assert what in text and "a bundle of a DP model declares neither counts nor " \
            "histogram" in text, text
    fd_ok("aggregate", root / "b1", root / "b2", "--rule", "confidence", "--out",
          root / "consensus")
    provenance = json.loads((root / "consensus" / "manifest.json").read_text())["provenance"]
    assert [p["client_id"] for p in provenance] == ["site-1", "site-2"]
    for p, i in zip(provenance, (1, 2)):
        own = json.loads((root / f"m{i}" / "fd.json").read_text())["privacy"]
        assert p["privacy"]["epsilon"] == own["epsilon"] <= 4
        assert p["privacy"]["privacy_unit"] == own["privacy_unit"]


def test_simulate_privacy_utility_tradeoff(tmp_path):
    out = tmp_path / "sim"
    r = fd("simulate", "--out", out, "--num-clients", 3, "--epochs", 2, "--distill-epochs", 2,
           "--rounds", 1, "--fedavg-rounds", 2, "--fedavg-local-epochs", 1, "--baselines",
           "fedavg", "--dp-epsilons", "8", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    dp = results["dp"]
    assert [(row["epsilon"], row["method"]) for row in dp["rows"]] == [
        (8.0, "fd (DP specialists)"), (8.0, "fd (PATE consensus)"), (8.0, "DP-FedAvg")]
    for row in dp["rows"]:
        assert 0.5 * row["epsilon"] < row["epsilon_spent_max"] <= row["epsilon"]
        assert 0 <= row["accuracy"] <= 1 and row["bytes"] > 0
    dp_sgd = [row for row in dp["rows"] if row["method"] != "fd (PATE consensus)"]
    assert all(row["architectures"] == ["vit"] for row in dp_sgd)  # a ViT stands in for the
    pate = dp["rows"][1]                                          # ResNet (BatchNorm)
    assert pate["architectures"] == ["resnet", "vit"]  # PATE's teachers: the run's specialists
    assert pate["bytes"] == results["bytes"]["fd"]["uploaded_total"] and pate["answered"] > 0
    consensus = json.loads((out / "dp" / "epsilon-8" / "pate-consensus" / "manifest.json")
                           .read_text())
    assert consensus["producer"]["config"]["privacy"]["epsilon"] == pate["epsilon_spent_max"]
    assert 0 <= dp["rows"][0]["attack_auc_specialists_max"] <= 1
    assert all(0 <= row["attack_auc_student"] <= 1 for row in dp["rows"][:2])
    assert all("attack_auc" in row for row in dp["rows"] if row["method"] == "DP-FedAvg")
    # every DP specialist's fd.json holds its guarantee; DP-FedAvg records what it spent
    for eps in ("8",):
        for i in range(3):
            meta = json.loads((out / "dp" / f"epsilon-{eps}" / "specialists" / f"client-{i}"
                               / "fd.json").read_text())
            assert meta["privacy"]["epsilon"] <= float(eps)
        fedavg = json.loads((out / "dp" / f"epsilon-{eps}" / "dp-fedavg" / "fd.json")
                            .read_text())
        assert fedavg["config"]["dp_epsilon"] <= float(eps)
    report = (out / "report.md").read_text()
    assert "## Differential privacy: utility against epsilon" in report
    assert "| 8 / " in report and (out / "privacy_utility.png").stat().st_size > 0


# -- PATE: the noisy-vote consensus ------------------------------------------------------
def test_gnmax_votes_by_hand():
    import math

    import torch

    from fdcli.rules import gnmax

    # 3 clients, 2 examples, 3 classes: example 0 votes 2, 2, 1; example 1 votes 0, 0, 0
    probs = torch.tensor([[[.1, .2, .7], [.8, .1, .1]],
                          [[.2, .1, .7], [.6, .3, .1]],
                          [[.1, .8, .1], [.9, .05, .05]]], dtype=torch.float64)
    present = torch.ones(3, 2, dtype=torch.bool)
    quiet = gnmax(probs, present, sigma=1e-9, generator=torch.Generator().manual_seed(0))
    assert quiet.tolist() == [[0, 0, 1], [1, 0, 0]]
    # a client that lacks example 1 does not vote on it
    absent = present.clone()
    absent[0, 1] = absent[1, 1] = False
    assert gnmax(probs, absent, sigma=1e-9).tolist()[1] == [1, 0, 0]
    # Confident-GNMax: only example 1 (3 votes) clears a threshold of 2.5
    confident = gnmax(probs, present, sigma=1e-9, threshold=2.5, threshold_sigma=1e-9)
    assert all(math.isnan(v) for v in confident[0].tolist()) and \
        confident[1].tolist() == [1, 0, 0]
    # the same seed, the same noise; heavy noise answers by chance
    loud = [gnmax(probs.repeat(1, 500, 1), present.repeat(1, 500), sigma=100.0,
                  generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(loud[0], loud[1]) and not torch.equal(loud[0], loud[2])
    assert 0.2 < loud[0][:, 2].mean().item() < 0.5


def test_pate_guarantee_and_the_noise_for_a_budget():
    from fdcli.dp import pate_guarantee, pate_sigma

    g = pate_guarantee(300, 10, 120, sigma=40.0, threshold=6.0, threshold_sigma=80.0,
                       delta=1e-5)
    assert g["answered"] == 120 and g["teachers"] == 10 and g["examples"] == 300
    looser = pate_guarantee(300, 10, 120, sigma=20.0, threshold=6.0, threshold_sigma=40.0,
                            delta=1e-5)
    assert 0 < g["epsilon"] < looser["epsilon"]
    sigma = pate_sigma(4.0, 300)
    at = pate_guarantee(300, 1, 0, sigma=sigma, threshold=1.0, threshold_sigma=2 * sigma,
                        delta=1e-5)["epsilon"]
    below = pate_guarantee(300, 1, 0, sigma=sigma * 0.99, threshold=1.0,
                           threshold_sigma=2 * sigma * 0.99, delta=1e-5)["epsilon"]
    assert at <= 4.0 < below


def test_aggregate_gnmax_writes_a_private_consensus(tmp_path):
    from .test_trust import client_bundle, one_line_error

    bundles = [client_bundle(tmp_path / f"b{i}", f"c{i}", seed=i, examples=200)
               for i in range(5)]
    r = fd("aggregate", *bundles, "--rule", "gnmax", "--dp-sigma", 0.5, "--dp-threshold", 4,
           "--dp-threshold-sigma", 0.5, "--out", tmp_path / "t", "--json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    g = manifest["producer"]["config"]["privacy"]
    assert (g["teachers"], g["examples"], g["sigma"], g["threshold"]) == (5, 200, 0.5, 4.0)
    assert 0 < g["answered"] < 200 and manifest["examples"] == g["answered"]
    assert printed["dp_epsilon"] == g["epsilon"] > 0 and printed["answered"] == g["answered"]
    assert g["noise"] == "operating system randomness"
    # no outlier report: it would disclose the votes
    assert all("distance_from_consensus" not in p for p in manifest["provenance"])
    # every answer is one label
    from fdcli.bundle import read_bundle

    for block in read_bundle(tmp_path / "t").iter_blocks():
        p = block.dense().exp()
        assert ((p.max(-1).values - 1).abs() < 1e-4).all()
    for args, message in (
            (["--rule", "gnmax"], "rule 'gnmax' needs dp_sigma > 0"),
            (["--rule", "gnmax", "--dp-sigma", 1, "--dp-threshold-sigma", 2],
             "dp_threshold_sigma applies with dp_threshold"),
            (["--rule", "gnmax", "--dp-sigma", 1, "--sharpen", 0.1],
             "sharpening does not apply"),
            (["--rule", "gnmax", "--dp-sigma", 1, "--dp-threshold", 99],
             "none of the 200 examples cleared the threshold 99"),
            (["--dp-sigma", 1], "--dp-sigma does not apply to --rule confidence")):
        one_line_error(fd("aggregate", *bundles, *args, "--out", tmp_path / "no"), message)
        assert not (tmp_path / "no").exists()
