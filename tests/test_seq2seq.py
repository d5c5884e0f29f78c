"""--task seq2seq: encoder-decoder specialists, token bundles per target token, distillation,
BLEU/chrF/ROUGE-L evaluation, fd generate, and the token simulations' FedAvg and attacks."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fdcli.bundle import read_bundle, verify_bundle
from fdcli.poison import poisoned_clients

from .helpers import fd as _fd

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron".split()


def _pairs(seed: int, n: int, reverse: bool) -> list[dict[str, str]]:
    """A copy task (the first three words) or a reversal, so tiny models learn quickly."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
        out.append({"source": " ".join(s), "target": " ".join(s[::-1][:3] if reverse else s[:3])})
    return out


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def s2s_world(tmp_path_factory):
    from fdcli.seq2seq import train_seq2seq_tokenizer

    w = tmp_path_factory.mktemp("s2s")
    _write(w / "a.jsonl", _pairs(1, 160, False))
    _write(w / "b.jsonl", _pairs(2, 160, True))
    _write(w / "proxy.jsonl", _pairs(3, 60, False) + _pairs(4, 60, True))
    _write(w / "test.jsonl", _pairs(5, 20, False) + _pairs(6, 20, True))
    _write(w / "sources.jsonl", [{"source": r["source"]} for r in _pairs(7, 30, False)])
    (w / "renamed.csv").write_text("code,doc\n" + "".join(
        f"{r['source']},{r['target']}\n" for r in _pairs(8, 20, False)))
    train_seq2seq_tokenizer([" ".join(WORDS)] * 20 + [r["source"] for r in _pairs(9, 200, False)],
                            w / "tok", vocab_size=300)
    (w / "t5.json").write_text(json.dumps({
        "model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2,
        "num_layers": 1, "num_decoder_layers": 1}))
    (w / "bart.json").write_text(json.dumps({
        "model_type": "bart", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
        "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64, "max_position_embeddings": 64}))
    (w / "gpt2.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16, "n_layer": 1,
                                             "n_head": 2, "n_positions": 64}))
    return w


def test_text_pairs_end_targets_and_fingerprint_what_was_read(s2s_world):
    from fdcli.data import DataError, load_local
    from fdcli.seq2seq import load_seq2seq, pad_pairs, text_pairs

    w = s2s_world
    m = load_seq2seq(w / "t5.json", tokenizer=w / "tok")
    assert (m.model.config.decoder_start_token_id, m.tokenizer.eos_token_id) == (0, 1)
    ds = load_local(w / "proxy.jsonl")
    p = text_pairs(ds, "proxy", m.tokenizer)
    assert len(p.sources) == len(p.targets) == 120
    assert all(t[-1] == 1 for t in p.targets)  # every target ends with </s>
    assert p.rows == sum(len(t) for t in p.targets)
    short = text_pairs(ds, "proxy", m.tokenizer, max_target_length=2)
    assert all(len(t) <= 2 and t[-1] == 1 for t in short.targets)
    assert short.fingerprint != p.fingerprint
    assert text_pairs(ds, "proxy", m.tokenizer).fingerprint == p.fingerprint
    batch = pad_pairs([[5, 6, 7], [8]], [[9, 10, 1], [11, 1]], pad=0, start=0)
    assert batch["decoder_input_ids"].tolist() == [[0, 9, 10], [0, 11, 0]]
    assert batch["next_ids"].tolist() == [[9, 10, 1], [11, 1, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(DataError, match="no target column found.*fd generate"):
        text_pairs(load_local(w / "sources.jsonl"), "sources", m.tokenizer)
    sources_only = text_pairs(load_local(w / "sources.jsonl"), "sources", m.tokenizer,
                              need_targets=False)
    assert sources_only.targets is None and len(sources_only.sources) == 30


def test_emitted_rows_are_the_decoder_step_by_step(s2s_world):
    """Teacher forcing in one pass gives the distributions of decoding token by token with
    the key-value cache."""
    from fdcli.data import load_local
    from fdcli.seq2seq import iter_pair_logits, load_seq2seq, text_pairs

    w = s2s_world
    m = load_seq2seq(w / "bart.json", tokenizer=w / "tok", seed=3)
    p = text_pairs(load_local(w / "proxy.jsonl"), "proxy", m.tokenizer)
    _, flat, counts, nxt = next(iter_pair_logits(m, p.sources[:4], p.targets[:4], 4))
    assert counts.tolist() == [len(t) for t in p.targets[:4]]
    assert nxt.tolist() == [i for t in p.targets[:4] for i in t]
    first = flat[:counts[0]]
    src = torch.tensor([p.sources[0]])
    dec = torch.tensor([[m.model.config.decoder_start_token_id]])
    past, steps = None, []
    with torch.no_grad():
        enc = m.model.get_encoder()(input_ids=src)
        for tok in p.targets[0]:
            out = m.model(encoder_outputs=enc, decoder_input_ids=dec, past_key_values=past,
                          use_cache=True)
            steps.append(out.logits[0, -1, :m.vocab_size])
            past, dec = out.past_key_values, torch.tensor([[tok]])
    assert torch.allclose(first, torch.stack(steps), atol=1e-4)


def test_rouge_l_and_text_metrics_by_hand():
    from fdcli.seq2seq import rouge_l, text_metrics

    # LCS("the cat sat on the mat", "the cat is on the mat") = 5; P = R = 5/6
    assert rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
    assert rouge_l("", "") == 1.0 and rouge_l("a b", "") == 0.0 and rouge_l("x", "y") == 0.0
    same = text_metrics(["return the sum of a and b"], ["return the sum of a and b"])
    assert same == {"bleu": pytest.approx(100), "chrf": pytest.approx(100),
                    "rouge_l": pytest.approx(100)}
    worse = text_metrics(["completely different words here"], ["return the sum of a and b"])
    assert worse["bleu"] < 5 and worse["rouge_l"] == 0 and worse["chrf"] < 30
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        text_metrics(["a"], ["a", "b"])


@pytest.fixture(scope="module")
def s2s_pipeline(s2s_world):
    """s2s_world after the seq2seq pipeline through the CLI, each step checked as it runs:
    specialists, bundles, teacher, student. Tests that need them take this fixture, so none
    depends on another test having run."""
    _seq2seq_pipeline_steps(s2s_world)
    return s2s_world


def test_seq2seq_pipeline_end_to_end(s2s_pipeline):
    assert (s2s_pipeline / "student" / "fd.json").exists()


def _seq2seq_pipeline_steps(s2s_world):
    w = s2s_world
    common = ["--task", "seq2seq", "--tokenizer", w / "tok"]
    for name, config in (("a", "t5.json"), ("b", "bart.json")):
        r = _fd("train-specialist", w / f"{name}.jsonl", "--model", w / config, *common,
                "--epochs", "4", "--lr", "3e-3", "--val-fraction", "0.1",
                "--max-target-length", "8", "--out", w / f"spec-{name}", "--json")
        assert r.exit_code == 0, r.output
        meta = json.loads((w / f"spec-{name}" / "fd.json").read_text())
        assert meta["task"] == "seq2seq" and meta["config"]["max_target_length"] == 8
        assert meta["train_examples"] == 144 and meta["metrics"]["val_nll"] > 0
    r = _fd("emit-logits", w / "spec-a", w / "proxy.jsonl", "--task", "seq2seq", "--k", "8",
            "--out", w / "bundle-a", "--json")
    assert r.exit_code == 0, r.output
    r = _fd("emit-logits", w / "spec-b", w / "proxy.jsonl", "--task", "seq2seq", "--draws",
            "6", "--out", w / "bundle-b", "--json")
    assert r.exit_code == 0, r.output
    a, b = read_bundle(w / "bundle-a"), read_bundle(w / "bundle-b")
    assert a.manifest.task == "token" and a.manifest.num_classes == 300
    assert b.manifest.encoding["name"] == "sample"
    # one row per target token, at the length the specialist was trained with
    assert a.manifest.producer.config["max_target_length"] == 8
    lengths = (a.read_all().row_offsets.diff()).tolist()
    assert a.manifest.rows == b.manifest.rows == sum(lengths) and max(lengths) <= 8
    assert a.manifest.proxy_fingerprint == b.manifest.proxy_fingerprint
    r = _fd("aggregate", w / "bundle-a", w / "bundle-b", "--out", w / "teacher", "--json")
    assert r.exit_code == 0, r.output
    t = read_bundle(w / "teacher")
    assert t.manifest.rows == a.manifest.rows and verify_bundle(w / "teacher").ok
    assert t.manifest.producer.config["task"] == "seq2seq"
    assert t.manifest.producer.config["max_target_length"] == 8
    r = _fd("distill", w / "t5.json", w / "proxy.jsonl", w / "teacher", *common,
            "--epochs", "6", "--lr", "3e-3", "--out", w / "student", "--json")
    assert r.exit_code == 0, r.output
    meta = json.loads((w / "student" / "fd.json").read_text())
    assert meta["proxy_tokens"] == t.manifest.rows and meta["config"]["hard_weight"] == 0.5
    scores = {}
    for name, model in (("student", w / "student"), ("untrained", w / "t5.json")):
        r = _fd("evaluate", model, w / "test.jsonl", *common, "--max-target-length", "8",
                "--json")
        assert r.exit_code == 0, r.output
        scores[name] = json.loads(r.stdout)
    s, u = scores["student"], scores["untrained"]
    assert s["examples"] == u["examples"] == 40 and s["tokens"] == u["tokens"]
    assert s["nll"] < u["nll"] - 1 and s["token_accuracy"] > u["token_accuracy"]
    assert s["bleu"] >= u["bleu"] and s["chrf"] > u["chrf"] and s["rouge_l"] >= u["rouge_l"]


def test_generate_writes_targets_every_teacher_then_shares(s2s_pipeline):
    w = s2s_pipeline
    r = _fd("generate", w / "spec-a", w / "sources.jsonl", "--max-target-length", "6",
            "--out", w / "gen.jsonl", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["examples"] == 30
    rows = [json.loads(x) for x in (w / "gen.jsonl").read_text().splitlines()]
    sources = [json.loads(x)["source"] for x in (w / "sources.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == sources and all("target" in r for r in rows)
    ms = []
    for name in ("a", "b"):
        r = _fd("emit-logits", w / f"spec-{name}", w / "gen.jsonl", "--task", "seq2seq",
                "--max-target-length", "6", "--out", w / f"gen-bundle-{name}")
        assert r.exit_code == 0, r.output
        ms.append(read_bundle(w / f"gen-bundle-{name}").manifest)
    assert ms[0].proxy_fingerprint == ms[1].proxy_fingerprint and ms[0].rows == ms[1].rows
    r = _fd("generate", w / "spec-a", w / "sources.jsonl", "--out", w / "gen.jsonl")
    assert r.exit_code == 1 and "already exists" in r.output


@pytest.mark.parametrize("args,fragment", [
    (["emit-logits", "{w}/spec-a", "{w}/sources.jsonl", "--task", "seq2seq"],
     "no target column found; expected one of"),
    (["emit-logits", "{w}/spec-a", "{w}/renamed.csv", "--task", "seq2seq",
      "--source-column", "code", "--target-column", "docs"],
     "target column 'docs' not found; the dataset has columns ['code', 'doc']"),
    (["emit-logits", "{w}/spec-a", "{w}/proxy.jsonl", "--task", "embedding", "--source-column",
      "source"], "fd emit-logits: --source-column does not apply to --task embedding"),
    (["distill", "{w}/t5.json", "{w}/proxy.jsonl", "{w}/teacher", "--task", "seq2seq",
      "--tokenizer", "{w}/tok", "--target-column", "source"],
     "these pairs (--max-source-length 256, --max-target-length 8, columns 'source'/'source')"
     " differ"),
    (["distill", "{w}/gpt2.json", "{w}/proxy.jsonl", "{w}/teacher", "--task", "causal-lm",
      "--tokenizer", "{w}/tok"], "--task causal-lm contradicts {w}/teacher/manifest.json, which "
     "says seq2seq"),
    (["distill", "{w}/gpt2.json", "{w}/proxy.jsonl", "{w}/teacher", "--task", "seq2seq",
      "--tokenizer", "{w}/tok"], "not a valid 'gpt2' sequence-to-sequence model config"),
    (["train-specialist", "{w}/a.jsonl", "--model", "{w}/t5.json", "--task", "seq2seq"],
     "t5.json: no tokenizer found"),
    (["train-specialist", "{w}/a.jsonl", "--model", "{w}/t5.json", "--task", "seq2seq",
      "--tokenizer", "{w}/tok", "--teacher", "{w}/teacher"],
     "--teacher (the consensus bundle) and --proxy (the proxy set it was made on) go together"),
    (["evaluate", "{w}/spec-a", "{w}/test.jsonl", "--task", "seq2seq", "--teacher",
      "{w}/teacher"], "fd evaluate: --teacher does not apply to --task seq2seq"),
    (["train-specialist", "{w}/a.jsonl", "--model", "{w}/t5.json", "--task", "seq2seq",
      "--tokenizer", "{w}/tok", "--max-length", "32"],
     "fd train-specialist: --max-length does not apply to --task seq2seq"),
    (["generate", "{w}/spec-a", "{w}/sources.jsonl", "--out", "{w}/gen.csv"],
     "gen.csv: expected a .jsonl file to write the targets to"),
    (["emit-logits", "{w}/spec-a", "{w}/proxy.jsonl", "--task", "regression"],
     "--task must be one of classification, causal-lm, seq2seq, embedding; got 'regression'"),
])
def test_seq2seq_errors_are_messages(s2s_pipeline, tmp_path, args, fragment):
    w = s2s_pipeline
    out = tmp_path / "err-out"
    extra = [] if args[0] in ("evaluate", "generate") else ["--out", out]
    result = _fd(*[a.format(w=w) for a in args], *extra)
    assert result.exit_code == 1, result.output
    assert fragment.format(w=w) in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not (w / "gen.csv").exists()


def test_fedavg_state_drops_tied_copies_and_loads_back(s2s_world):
    from fdcli.seq2seq import load_seq2seq
    from fdcli.stages.token_evidence import bytes_to_perplexity, load_unique, unique_state

    w = s2s_world
    m = load_seq2seq(w / "t5.json", tokenizer=w / "tok", seed=1)
    full, unique = m.model.state_dict(), unique_state(m.model)
    # T5 ties its input embeddings and output layer: one copy crosses the wire
    assert len(unique) < len(full) and "shared.weight" in unique
    assert "lm_head.weight" not in unique
    other = load_seq2seq(w / "t5.json", tokenizer=w / "tok", seed=2)
    load_unique(other.model, {k: v.clone() for k, v in unique.items()})
    assert all(torch.equal(v, other.model.state_dict()[k]) for k, v in full.items())
    with pytest.raises(RuntimeError, match="lacks"):
        load_unique(other.model, {k: v for k, v in unique.items() if k != "shared.weight"})
    curve = [{"round": 0, "total_bytes": 0, "perplexity": 50.0},
             {"round": 1, "total_bytes": 100, "perplexity": 20.0},
             {"round": 2, "total_bytes": 200, "perplexity": 9.0}]
    assert bytes_to_perplexity(curve, 10.0) == {"reached": True, "round": 2, "bytes": 200}
    assert bytes_to_perplexity(curve, 5.0) == {"reached": False, "round": None, "bytes": 200}


def test_simulate_seq2seq_small(tmp_path):
    out = tmp_path / "sim"
    r = _fd("simulate", "--task", "seq2seq", "--num-clients", "2", "--proxy-pairs", "60",
            "--epochs", "2", "--distill-epochs", "2", "--fedavg-rounds", "1",
            "--fedavg-local-epochs", "1", "--rounds", "2", "--round-epochs", "1",
            "--round-distill-epochs", "1", "--poison", "0.5", "--poison-kind", "overconfident",
            "--out", out)
    assert r.exit_code == 0, r.output
    assert "docstrings on the union of the domains" in r.output
    res = json.loads((out / "results.json").read_text())
    scores = {(s["method"], s["variant"].get("targets")): s["metrics"] for s in res["scores"]}
    # round 2: the specialists digested round 1's consensus on the proxy pairs; the student
    # (the headline) continued on round 2's consensus
    first, second = res["rounds"]
    assert first["student"] == res["students"]["proxy_targets"]
    assert res["student"]["round"] == 2 and second["perplexity"] == \
        res["student"]["union"]["perplexity"]
    round2 = out / "rounds" / "round-2"
    meta = json.loads((round2 / "specialists" / "client-1" / "fd.json").read_text())
    assert meta["round"] == 2 and meta["consensus"]["sha256"] == read_bundle(
        out / "teachers" / "confidence").manifest_sha256
    assert all(0 <= r[f"validation_{k}"] <= 100 for r in (first, second)
               for k in ("bleu", "chrf", "rouge_l"))
    assert ("| round | student ppl | validation ppl | validation BLEU | validation chrF | "
            "validation ROUGE-L |") in (out / "report.md").read_text()
    assert meta["proxy_examples"] == res["proxy_pairs"]
    assert second["downloaded_bytes"] == 2 * sum(
        p.stat().st_size for p in (out / "teachers" / "confidence").iterdir())
    assert res["bytes"]["total"] == res["curves"]["fd"][-1]["total_bytes"] == sum(
        r["uploaded_bytes"] + r["downloaded_bytes"] for r in res["rounds"])
    assert "| 2 | " in (out / "report.md").read_text().split("Rounds")[1]
    # one of the two clients is hostile: certain of a wrong token, in every bundle it sends
    hostile = [f"client-{i}" for i in poisoned_clients(2, 0.5, seed=0)]
    assert res["poisoned_clients"] == hostile and res["config"]["poison_kind"] == "overconfident"
    for bundle in (out / "bundles", round2 / "bundles", out / "bundles-generated"):
        sure = read_bundle(bundle / hostile[0]).read_all().dense().exp().max(-1).values
        assert bool((sure > 0.99).all()), bundle
    assert res["task"] == "seq2seq" and scores[("fd", "proxy")]["bleu"] == [
        pytest.approx(res["student"]["union"]["bleu"])]
    assert scores[("centralized", None)]["chrf"] == [
        pytest.approx(res["centralized"]["union"]["chrf"])]
    assert res["config"]["task"] == "seq2seq" and list(res["domains"]) == ["asyncio", "email"]
    assert res["proxy_pairs"] == 60
    for s, own in zip(res["specialists"], res["domains"]):
        assert s["own"] == s["by_domain"][own] and set(s["by_domain"]) == set(res["domains"])
        assert s["uploaded_bytes"] == sum(p.stat().st_size for p in
                                          (out / "bundles" / s["client_id"]).iterdir())
    for model in (res["student"], res["students"]["generated_targets"], res["proxy_only"],
                  res["centralized"], *res["baselines"].values()):
        u = model["union"]
        assert 0 <= u["bleu"] <= 100 and 0 <= u["chrf"] <= 100 and 0 <= u["rouge_l"] <= 100
        assert 1 < u["perplexity"] < float("inf")
    # trained on the proxy's own docstrings: below the uniform perplexity of the vocabulary
    for model in (res["student"], res["proxy_only"], res["centralized"]):
        assert model["union"]["perplexity"] < 2048
    fp32, q8 = res["baselines"]["fedavg"], res["baselines"]["fedavg_8bit"]
    # one round: the model down and up for each of 2 clients; 8-bit is about a quarter
    assert 0.2 < q8["total_bytes"] / fp32["total_bytes"] < 0.35
    assert res["curves"]["fedavg"][-1]["total_bytes"] == fp32["total_bytes"]
    p = res["privacy"]
    assert len(p["specialists"]) == 2
    for name in ("student", "centralized", "proxy_only", "fedavg", "fedavg_8bit"):
        assert 0 <= p[name]["auc"] <= 1 and 0 <= p[name]["reference"]["auc"] <= 1
    # the reference model is the proxy-only student: its reference attack scores 0 everywhere
    assert p["proxy_only"]["reference"]["auc"] == 0.5
    report = (out / "report.md").read_text()
    assert "| student (proxy targets, round 1) | t5-tiny |" in report and \
        "| student (proxy targets, round 2) | t5-tiny |" in report and "fedavg_8bit" in report
    assert "Membership inference" in report


def test_hostile_strings_in_a_teacher_config_are_escaped(s2s_pipeline, tmp_path):
    """The task and columns a teacher's manifest names come from another institution: they
    reach the messages escaped, never as terminal codes or console markup."""
    import shutil

    w = s2s_pipeline
    bad = tmp_path / "teacher"
    shutil.copytree(w / "teacher", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["producer"]["config"]["task"] = "\x1b[31m[bold red]evil[/bold red]"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    r = _fd("distill", w / "t5.json", w / "proxy.jsonl", bad, "--task", "seq2seq",
            "--tokenizer", w / "tok", "--out", tmp_path / "out")
    assert r.exit_code == 1 and "\x1b" not in r.output
    assert "'\\x1b[31m[bold red]evil[/bold red]' token bundle" in r.output
    manifest["producer"]["config"].update(task="seq2seq", source_column="[link=x]y[/link]\x07")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    r = _fd("distill", w / "t5.json", w / "proxy.jsonl", bad, "--task", "seq2seq",
            "--tokenizer", w / "tok", "--out", tmp_path / "out")
    assert r.exit_code == 1 and "\x07" not in r.output
    assert "source column '[link=x]y[/link]\\x07' not found" in " ".join(r.output.split())
    assert not (tmp_path / "out").exists()
