"""Token-level (causal-LM) distillation: bundles with offsets, sparse aggregation, the KD
losses, and the five stages end to end on tiny random-init language models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fdcli.bundle import SampleCodec, SparseRows, TopKCodec, read_bundle, verify_bundle
from fdcli.lm import load_lm
from fdcli.poison import poisoned_clients
from fdcli.losses import dense_kd_loss, sparse_kd_loss
from fdcli.rules import RULES, aggregate_sparse, union_support
from fdcli.stages.lm import default_temperature

from .helpers import fd as _fd

from .helpers import make_bundle, peaked_logits


RULE_PARAMS = [("mean", {}), ("confidence", {"measure": "max", "tau": 0.5}),
               ("confidence", {"measure": "neg_entropy", "tau": 1.0}),
               ("entropy-reduction", {"temperature": 0.1}), ("median", {}),
               ("trimmed-mean", {"trim": 0.34}), ("weighted", {"counts": [1.0, 2.0, 3.0]})]


# -- bundles -------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", [TopKCodec(4), TopKCodec(4, "fp16"), SampleCodec(8)])
def test_token_bundle_round_trips_with_offsets(tmp_path, codec):
    counts = [3, 1, 5, 2, 4]
    m, logits, ids, rows = make_bundle(tmp_path / "b", codec, vocab=300, examples=5,
                                       rows_per_example=counts, max_shard_rows=6)
    assert m.task == "token" and m.rows == 15 and m.examples == 5 and len(m.shards) > 1
    reader = read_bundle(tmp_path / "b")
    block = reader.read_all()
    assert block.example_ids.tolist() == ids.tolist()
    assert block.row_offsets.tolist() == [0, 3, 4, 9, 11, 15]
    per_example = list(reader.iter_examples())
    assert [b.rows for b in per_example] == counts
    # rows stay in order: example 2's rows are logits rows 4..8
    ex2 = per_example[2].sparse()
    if codec.name == "topk":
        want = logits[4:9].topk(4).indices.sort(-1).values
        assert torch.equal(ex2.ids, want)
    assert ex2.ids.shape[0] == 5
    assert verify_bundle(tmp_path / "b").ok


def test_encode_sparse_relists_the_top_ids_and_keeps_the_mass(tmp_path):
    v = 50
    logp = torch.log_softmax(peaked_logits(6, v, 3), -1)
    ids = logp.topk(10).indices
    rows = SparseRows(ids, logp.gather(1, ids),
                      torch.logsumexp(logp.scatter(1, ids, -math.inf), -1), v)
    t = TopKCodec(4, "fp16").encode_sparse(rows)
    assert torch.equal(t["ids"].long(), logp.topk(4).indices.sort(-1).values)
    got = TopKCodec(4, "fp16").sparse(t, v)
    want_tail = torch.logsumexp(logp.scatter(1, logp.topk(4).indices, -math.inf), -1)
    assert torch.allclose(got.tail_logp, want_tail, atol=2e-3)
    # fewer listed ids than k: unlisted ids are added with their even share of the tail
    few = SparseRows(ids[:, :2], logp.gather(1, ids[:, :2]),
                     torch.logsumexp(logp.scatter(1, ids[:, :2], -math.inf), -1), v)
    t = TopKCodec(4, "fp16").encode_sparse(few)
    dense_before = few.to_dense()
    dense_after = TopKCodec(4, "fp16").sparse(t, v).to_dense()
    assert torch.allclose(dense_before.exp(), dense_after.exp(), atol=1e-4)


def test_encode_sparse_of_rows_without_a_tail_keeps_ids_distinct():
    """Sampled rows carry all their mass on a few ids (no tail), padded with id 0 at -inf:
    re-sparsifying to more ids than they list must not repeat an id (a bundle whose ids
    repeat is refused on reading), and must keep the mass where it was."""
    inf = math.inf
    v = 40
    ids = torch.tensor([[0, 3, 7, 0, 0], [5, 0, 0, 0, 0]])
    logp = torch.tensor([[0.5, 0.25, 0.25, 0, 0], [1.0, 0, 0, 0, 0]]).log()
    rows = SparseRows(ids, logp, torch.full((2,), -inf), v)
    codec = TopKCodec(6, "int8")
    t = codec.encode_sparse(rows)
    got = t["ids"].long()
    assert got.shape == (2, 6) and bool((got[:, 1:] > got[:, :-1]).all())
    assert codec.check_values(t, v) == []
    back = codec.sparse(t, v).to_dense().exp()
    assert torch.allclose(back[0, [0, 3, 7]], torch.tensor([0.5, 0.25, 0.25]), atol=0.01)
    assert math.isclose(float(back[1, 5]), 1.0, abs_tol=0.01)


# -- aggregation ---------------------------------------------------------------------------
def _clients(v=12, n=5, ks=(3, 4, 2), seed=0):
    torch.manual_seed(seed)
    out = []
    for k in ks:
        codec = TopKCodec(k, "fp16")
        out.append(codec.sparse(codec.encode_logits(torch.randn(n, v) * 2, v), v))
    return out


@pytest.mark.parametrize("rule,params", RULE_PARAMS)
def test_sparse_aggregation_equals_the_dense_rule_on_a_tiny_vocabulary(rule, params):
    clients = _clients()
    present = torch.ones(3, 5, dtype=torch.bool)
    present[1, 2] = False  # client 1 lacks row 2
    # the dense reference: each client's tail spread evenly over the ids it did not keep
    dense = torch.stack([c.to_dense().double().exp() for c in clients])
    want = RULES[rule](dense, present, **params)
    got = aggregate_sparse(clients, present, rule, **params)
    assert torch.allclose(got.to_dense().double().exp(), want, atol=1e-6)


def test_union_support_by_hand():
    v = 6
    a = SparseRows(torch.tensor([[0, 2]]), torch.tensor([[0.5, 0.3]]).log(),
                   torch.tensor([0.2]).log(), v)
    b = SparseRows(torch.tensor([[2, 5]]), torch.tensor([[0.6, 0.2]]).log(),
                   torch.tensor([0.2]).log(), v)
    ids, probs, mult = union_support([a, b], torch.ones(2, 1, dtype=torch.bool))
    assert ids.tolist() == [[0, 2, 5]]
    # a: ids 0, 2 listed; 5 gets 0.2 / 4; the 3 ids outside the union each 0.2 / 4
    assert torch.allclose(probs[0, 0], torch.tensor([0.5, 0.3, 0.05, 0.05], dtype=torch.float64))
    assert torch.allclose(probs[1, 0], torch.tensor([0.05, 0.6, 0.2, 0.05], dtype=torch.float64))
    assert mult.tolist() == [[1.0, 1.0, 1.0, 3.0]]
    mean = aggregate_sparse([a, b], torch.ones(2, 1, dtype=torch.bool), "mean")
    assert torch.allclose(mean.logp.exp(), torch.tensor([[0.275, 0.45, 0.125]]), atol=1e-6)
    assert math.isclose(float(mean.tail_logp.exp()), 0.15, abs_tol=1e-6)


@pytest.mark.parametrize("rule,params", RULE_PARAMS)
def test_aggregation_in_chunks_of_rows_is_the_same_bit_for_bit(rule, params, monkeypatch):
    """Many clients that share few ids: the union is combined a few rows at a time (memory
    bounded by max_elements), and every row is what one piece gives, bit for bit; so are the
    outlier distances' top-class agreements, and the distances to within rounding."""
    g = torch.Generator().manual_seed(3)
    v, n, clients = 700, 60, []
    for k in (8, 8, 4, 8, 6, 8, 8):
        ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)]).sort(-1).values
        logp = torch.log_softmax(torch.randn(n, k + 1, generator=g) * 2, -1)
        kept = logp[:, :k].masked_fill(torch.rand(n, k, generator=g) < 0.1, -math.inf)
        tail = logp[:, k].masked_fill(torch.rand(n, generator=g) < 0.05, -math.inf)
        clients.append(SparseRows(ids, kept, tail, v))
    present = torch.rand(len(clients), n, generator=g) > 0.2
    present[0] = True
    if rule == "weighted":
        params = {"counts": [float(i + 1) for i in range(len(clients))]}
    whole, chunked = [], []
    a = aggregate_sparse(clients, present, rule, distances=whole, max_elements=0, **params)
    # union width <= 50 + 1, 7 clients: 7 * 51 * 9 elements is at most 9 rows at once (dense
    # rules) or 3213 // (8 * (entries + width)) rows (the others)
    import fdcli.union_rules

    seen, entries = [], fdcli.union_rules.union_entries
    monkeypatch.setattr(fdcli.union_rules, "union_entries",
                        lambda c, p, u: seen.append(p.shape[1]) or entries(c, p, u))
    b = aggregate_sparse(clients, present, rule, distances=chunked, max_elements=7 * 51 * 9,
                         **params)
    assert sum(seen) == n and max(seen) <= 9 and len(seen) >= 7
    w = a.ids.shape[1]
    assert b.ids.shape[1] == w and w > 30
    assert torch.equal(a.ids, b.ids) and torch.equal(a.logp, b.logp)
    assert torch.equal(a.tail_logp, b.tail_logp)
    assert torch.equal(whole[0][1], chunked[0][1])
    assert torch.allclose(whole[0][0], chunked[0][0], atol=1e-12, equal_nan=True)


def test_aggregate_stage_streams_token_bundles_and_resparsifies(tmp_path):
    from fdcli.stages.aggregate import aggregate

    counts = [3, 1, 5, 2]
    for i, k in enumerate((4, 6)):
        make_bundle(tmp_path / f"b{i}", TopKCodec(k, "fp16"), vocab=40, examples=4,
                    rows_per_example=counts, data_seed=i, max_shard_rows=4 + i,
                    client_id=f"client-{i}")
    m = aggregate([tmp_path / "b0", tmp_path / "b1"], tmp_path / "t", rule="mean", k=5,
                  value_dtype="fp16", progress=False)
    assert (m.task, m.rows, m.examples, m.encoding["k"]) == ("token", 11, 4, 5)
    assert m.producer.config["rule"] == "mean" and len(m.provenance) == 2
    got = read_bundle(tmp_path / "t").read_all()
    assert got.row_offsets.tolist() == [0, 3, 4, 9, 11]
    blocks = [read_bundle(tmp_path / f"b{i}").read_all().sparse() for i in range(2)]
    want = RULES["mean"](torch.stack([b.to_dense().double().exp() for b in blocks]),
                         torch.ones(2, 11, dtype=torch.bool))
    sp = got.sparse()
    assert torch.equal(sp.ids, want.topk(5).indices.sort(-1).values)
    assert torch.allclose(sp.logp.exp().double(), want.gather(1, sp.ids), atol=1e-3)


def test_aggregate_refuses_a_different_tokenizer_and_names_it(tmp_path):
    make_bundle(tmp_path / "a", TopKCodec(4), vocab=40, examples=3)
    make_bundle(tmp_path / "b", TopKCodec(4), vocab=41, examples=3)
    result = _fd(*["aggregate", str(tmp_path / "a"), str(tmp_path / "b"),
                                 "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'b'}: label_space.fingerprint" in result.output
    assert "the tokenizers differ: 41 vs 40 ids" in result.output
    assert not (tmp_path / "t").exists()


def test_aggregate_refuses_mismatched_token_rows(tmp_path):
    from fdcli.errors import IncompatibleBundlesError
    from fdcli.stages.aggregate import aggregate

    make_bundle(tmp_path / "a", TopKCodec(4), vocab=40, examples=3, rows_per_example=[2, 2, 2])
    make_bundle(tmp_path / "b", TopKCodec(4), vocab=40, examples=3, rows_per_example=[2, 3, 2],
                client_id="client-b")
    with pytest.raises(IncompatibleBundlesError, match=r"example 13 has 3 token rows, but .*a "
                                                       "has 2; the bundles tokenized"):
        aggregate([tmp_path / "a", tmp_path / "b"], tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()


# -- losses --------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_kd_equals_dense_kl_when_k_is_the_vocabulary(temperature):
    v = 30
    student = torch.randn(7, v, requires_grad=True)
    teacher = peaked_logits(7, v, 1)
    codec = TopKCodec(v, "fp16")
    sp = codec.sparse_at(codec.encode_logits(teacher, v), v, temperature)
    assert sp.ids.shape == (7, v)
    sparse = sparse_kd_loss(student, sp.ids, sp.logp, sp.tail_logp, temperature)
    dense = dense_kd_loss(student, torch.log_softmax(teacher / temperature, -1), temperature)
    assert math.isclose(float(sparse.detach()), float(dense.detach()), rel_tol=2e-3)
    g1, = torch.autograd.grad(sparse, student)
    g2, = torch.autograd.grad(dense, student)
    assert torch.allclose(g1, g2, atol=1e-4)


def test_sampled_loss_gradient_is_unbiased():
    """E over draws of the sampled-target gradient equals the dense KL gradient, T * (q - p)
    averaged over rows, within 5 standard errors per logit."""
    v, temperature, draws, trials = 20, 2.0, 8, 3000
    teacher = peaked_logits(2, v, 5)
    student = torch.randn(2, v)
    codec = SampleCodec(draws, temperature)
    logp, lse = torch.log_softmax(teacher, -1), torch.logsumexp(teacher, -1)
    gen = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(trials):
        s = student.clone().requires_grad_(True)
        sp = codec.sparse_at(codec.encode(logp, lse, v, gen), v, temperature)
        loss = sparse_kd_loss(s, sp.ids, sp.logp, sp.tail_logp, temperature)
        grads.append(torch.autograd.grad(loss, s)[0])
    g = torch.stack(grads)
    s = student.clone().requires_grad_(True)
    exact = torch.autograd.grad(dense_kd_loss(s, torch.log_softmax(teacher / temperature, -1),
                                              temperature), s)[0]
    err = g.std(0) / math.sqrt(trials) + 1e-9
    assert bool(((g.mean(0) - exact).abs() <= 5 * err + 1e-6).all())
    # and the sampled estimate is not trivially the exact one
    assert float((g[0] - exact).abs().max()) > 1e-3


def test_teacher_rows_decode_a_batch_without_a_dense_tensor(tmp_path):
    from fdcli.bundle import TeacherRows

    make_bundle(tmp_path / "b", TopKCodec(4), vocab=5000, examples=4,
                rows_per_example=[2, 3, 1, 4])
    rows = TeacherRows(read_bundle(tmp_path / "b").read_all(), 2.0)
    batch = rows.batch([33, 3])  # example ids, in batch order
    assert set(batch) == {"fd_ids", "fd_logp", "fd_tail"}
    assert batch["fd_ids"].shape == (4 + 2, 4)  # never [rows, 5000]
    assert torch.allclose(torch.logsumexp(torch.cat([batch["fd_logp"],
                                                     batch["fd_tail"][:, None]], -1), -1),
                          torch.zeros(6), atol=1e-5)


# -- the stages end to end ------------------------------------------------------------------
def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _corpus(seed: int, n: int, words: list[str]) -> list[str]:
    """Documents from a tiny bigram-ish grammar, so a small LM can learn something."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        picks = torch.randint(0, len(words), (40,), generator=g).tolist()
        docs.append(" ".join(f"{words[i]} {words[(i + 1) % len(words)]}" for i in picks) + ".")
    return docs


@pytest.fixture(scope="module")
def lm_world(tmp_path_factory):
    from fdcli.lm import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("lm")
    legal = ["court", "ruling", "appeal", "judge", "statute", "party", "claim", "order"]
    clinic = ["patient", "dose", "scan", "nurse", "ward", "fever", "blood", "chart"]
    a = _corpus(1, 40, legal)
    b = _corpus(2, 40, clinic)
    proxy = _corpus(3, 20, legal) + _corpus(4, 20, clinic)
    test = _corpus(5, 8, legal) + _corpus(6, 8, clinic)
    for name, docs in (("a", a), ("b", b), ("proxy", proxy), ("test", test)):
        _write_jsonl(root / f"{name}.jsonl", docs)
    train_bpe_tokenizer(proxy, root / "tok", vocab_size=300)
    train_bpe_tokenizer(a, root / "other-tok", vocab_size=280)
    (root / "gpt2.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}))
    (root / "llama.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 64}))
    return root


@pytest.fixture(scope="module")
def lm_pipeline(lm_world):
    """lm_world after the causal-LM pipeline through the CLI, each step checked as it runs:
    specialists, bundles, teacher, student. Tests that need them take this fixture, so none
    depends on another test having run."""
    _causal_lm_pipeline_steps(lm_world)
    return lm_world


def test_causal_lm_pipeline_end_to_end(lm_pipeline):
    assert (lm_pipeline / "student" / "fd.json").exists()


def _causal_lm_pipeline_steps(lm_world):
    w = lm_world
    common = ["--task", "causal-lm", "--max-length", "32"]
    for name, config in (("a", "gpt2.json"), ("b", "llama.json")):
        r = _fd("train-specialist", w / f"{name}.jsonl", "--model", w / config, "--tokenizer",
                w / "tok", *common, "--epochs", "2", "--lr", "3e-3", "--val-fraction", "0.1",
                "--out", w / f"spec-{name}", "--json")
        assert r.exit_code == 0, r.output
        meta = json.loads((w / f"spec-{name}" / "fd.json").read_text())
        assert meta["task"] == "causal-lm" and meta["train_tokens"] > 0
        assert meta["val_perplexity"] if "val_perplexity" in meta else \
            meta["metrics"]["val_perplexity"] < 300
    r = _fd("emit-logits", w / "spec-a", w / "proxy.jsonl", *common, "--k", "8",
            "--out", w / "bundle-a", "--json")
    assert r.exit_code == 0, r.output
    # the task is the specialist's own (its fd.json): no --task needed
    r = _fd("emit-logits", w / "spec-b", w / "proxy.jsonl", "--max-length", "32", "--k", "8",
            "--value-dtype", "fp16", "--out", w / "bundle-b", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["task"] == "causal-lm"
    a, b = read_bundle(w / "bundle-a"), read_bundle(w / "bundle-b")
    assert (a.manifest.task, a.manifest.encoding["k"], b.manifest.encoding["value_dtype"]) == \
        ("token", 8, "fp16")
    assert a.manifest.rows == b.manifest.rows and a.manifest.label_fingerprint == \
        b.manifest.label_fingerprint
    assert a.manifest.num_classes == 300
    # rows per example are the block lengths: 32 each, the last one shorter
    offsets = a.read_all().row_offsets
    assert set((offsets[1:-1] - offsets[:-2]).tolist()) == {32}
    r = _fd("aggregate", w / "bundle-a", w / "bundle-b", "--out", w / "teacher", "--json")
    assert r.exit_code == 0, r.output
    t = read_bundle(w / "teacher")
    assert t.manifest.task == "token" and t.manifest.rows == a.manifest.rows
    assert t.manifest.producer.config["max_length"] == 32
    assert verify_bundle(w / "teacher").ok
    r = _fd("distill", w / "gpt2.json", w / "proxy.jsonl", w / "teacher",  # task: the bundle's
            "--tokenizer", w / "tok", "--epochs", "4", "--lr", "3e-3", "--hard-weight", "0.2",
            "--out", w / "student", "--json")
    assert r.exit_code == 0, r.output
    meta = json.loads((w / "student" / "fd.json").read_text())
    assert meta["proxy_tokens"] == t.manifest.rows and meta["config"]["max_length"] == 32
    scores = {}
    for name, model in (("student", w / "student"), ("untrained", w / "gpt2.json")):
        r = _fd("evaluate", model, w / "test.jsonl", *common, "--tokenizer", w / "tok",
                "--teacher", w / "teacher", "--proxy", w / "proxy.jsonl", "--json")
        assert r.exit_code == 0, r.output
        scores[name] = json.loads(r.stdout)
    s, u = scores["student"], scores["untrained"]
    # without --max-length, a model fd trained is scored at the length it was trained with
    r = _fd("evaluate", w / "spec-a", w / "test.jsonl", "--task", "causal-lm", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tokens"] == s["tokens"]
    assert s["tokens"] == u["tokens"] > 0
    assert s["perplexity"] < 0.5 * u["perplexity"]  # the untrained model is near 300
    assert s["teacher_kl_kept"] < u["teacher_kl_kept"]
    assert s["teacher_top1_match"] > u["teacher_top1_match"]
    assert 0 <= s["next_token_accuracy"] <= 1


def test_causal_lm_round_two_digests_the_consensus(lm_pipeline):
    """A later round of a causal LM: the specialist continues from its round-1 self on its own
    text and learns the consensus on every token of the proxy blocks; it then knows the other
    institution's domain (the test text is half legal, half clinical) far better than the
    specialist that only revisited its text, its bundle carries the round, and the
    coordinator's next consensus is numbered round 2."""
    w = lm_pipeline
    common = ["--max-length", "32", "--epochs", "2", "--lr", "3e-3"]
    r = _fd("train-specialist", w / "a.jsonl", "--model", w / "spec-a", *common,
            "--teacher", w / "teacher", "--proxy", w / "proxy.jsonl", "--digest-weight", "0.5",
            "--out", w / "spec-a-r2", "--json")
    assert r.exit_code == 0, r.output
    meta = json.loads((w / "spec-a-r2" / "fd.json").read_text())
    teacher = read_bundle(w / "teacher")
    assert meta["round"] == 2 and meta["consensus"]["sha256"] == teacher.manifest_sha256
    assert meta["proxy_examples"] == teacher.manifest.examples
    assert meta["client_id"] == json.loads((w / "spec-a" / "fd.json").read_text())["client_id"]
    # the consensus is flat (top-8 of two tiny models): the temperature fd distill would pick
    assert meta["config"]["temperature"] == default_temperature(teacher.manifest)
    assert meta["config"]["digest_weight"] == 0.5 and meta["config"]["schedule"] == "mixed"
    r = _fd("train-specialist", w / "a.jsonl", "--model", w / "spec-a", *common,
            "--out", w / "spec-a-revisit", "--json")
    assert r.exit_code == 0, r.output
    ppl = {}
    for name in ("spec-a-r2", "spec-a-revisit"):
        r = _fd("evaluate", w / name, w / "test.jsonl", "--json")
        assert r.exit_code == 0, r.output
        ppl[name] = json.loads(r.stdout)["perplexity"]
    assert ppl["spec-a-r2"] < 0.7 * ppl["spec-a-revisit"], ppl  # measured 14.8 against 38.6
    r = _fd("emit-logits", w / "spec-a-r2", w / "proxy.jsonl", "--k", "8", "--out",
            w / "bundle-a-r2", "--json")
    assert r.exit_code == 0, r.output
    emitted = read_bundle(w / "bundle-a-r2").manifest.producer.config
    assert emitted["round"] == 2 and emitted["consensus"]["sha256"] == teacher.manifest_sha256
    r = _fd("aggregate", w / "bundle-a-r2", w / "bundle-b", "--out", w / "teacher-r2", "--json")
    assert r.exit_code == 0, r.output
    assert read_bundle(w / "teacher-r2").manifest.producer.config["round"] == 2


@pytest.mark.parametrize("args, fragment", [
    (["--teacher", "{w}/bundle-a"], "--teacher (the consensus bundle) and --proxy"),
    (["--teacher", "{w}/teacher", "--proxy", "{w}/test.jsonl"],
     "test.jsonl: these token blocks"),
    (["--teacher", "{w}/teacher", "--proxy", "{w}/proxy.jsonl", "--digest-weight", "0"],
     "digest_weight must be in (0, 1], got 0.0"),
    (["--teacher", "{w}/teacher", "--proxy", "{w}/proxy.jsonl", "--schedule", "later"],
     "schedule must be one of ['mixed', 'alternate'], got 'later'"),
])
def test_causal_lm_round_errors_are_messages(lm_pipeline, args, fragment):
    w = lm_pipeline
    out = w / "round-err"
    r = _fd("train-specialist", w / "a.jsonl", "--model", w / "spec-a", "--max-length", "32",
            *[a.format(w=w) for a in args], "--out", out)
    assert r.exit_code == 1, r.output
    assert fragment.format(w=w) in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and not out.exists()


def _sampled_bundle(w):
    """spec-b's sampled bundle (12 draws per position), emitted once per world."""
    if not (w / "sampled-b").exists():
        r = _fd("emit-logits", w / "spec-b", w / "proxy.jsonl", "--task", "causal-lm",
                "--max-length", "32", "--draws", "12", "--out", w / "sampled-b", "--json")
        assert r.exit_code == 0, r.output


def test_causal_lm_student_from_a_sampled_bundle(lm_pipeline):
    """The sampled-target loss: a student distilled from spec-b's sampled ids alone (at the
    temperature they were drawn at) moves towards spec-b."""
    w = lm_pipeline
    _sampled_bundle(w)
    m = read_bundle(w / "sampled-b").manifest
    assert m.encoding == {"name": "sample", "draws": 12, "temperature": 1.0}
    # without --temperature, a sampled teacher is read at the temperature it was drawn at
    r = _fd("distill", w / "gpt2.json", w / "proxy.jsonl", w / "sampled-b", "--task",
            "causal-lm", "--tokenizer", w / "tok", "--epochs", "3", "--lr", "3e-3",
            "--out", w / "student-sampled")
    assert r.exit_code == 0, r.output
    assert json.loads((w / "student-sampled" / "fd.json").read_text())["config"][
        "temperature"] == 1.0
    kl = {}
    for name, model in (("student", w / "student-sampled"), ("untrained", w / "gpt2.json")):
        r = _fd("evaluate", model, w / "test.jsonl", "--task", "causal-lm", "--max-length", "32",
                "--tokenizer", w / "tok", "--teacher", w / "bundle-b", "--proxy",
                w / "proxy.jsonl", "--json")
        assert r.exit_code == 0, r.output
        kl[name] = json.loads(r.stdout)["teacher_kl_kept"]
    assert kl["student"] < kl["untrained"]


@pytest.mark.parametrize("args,fragment", [
    (["distill", "{w}/gpt2.json", "{w}/proxy.jsonl", "{w}/bundle-a", "--task", "causal-lm",
      "--tokenizer", "{w}/other-tok"], "its tokenizer (280 ids"),
    (["distill", "{w}/gpt2.json", "{w}/proxy.jsonl", "{w}/bundle-a", "--task", "causal-lm",
      "--tokenizer", "{w}/tok", "--max-length", "16"],
     "these token blocks (packed to --max-length 16) differ"),
    (["distill", "{w}/gpt2.json", "{w}/proxy.jsonl", "{w}/bundle-a", "--tokenizer", "{w}/tok",
      "--task", "classification"], "--task classification contradicts {w}/bundle-a/manifest.json, "
     "which says causal-lm"),
    (["distill", "{w}/gpt2.json", "{w}/proxy.jsonl", "{w}/sampled-b", "--task", "causal-lm",
      "--tokenizer", "{w}/tok", "--temperature", "2"], "drawn at; it cannot be read at 2.0"),
    (["emit-logits", "{w}/spec-a", "{w}/proxy.jsonl", "--task", "causal-lm", "--encoding",
      "lowrank"], "encoding must be one of ('topk', 'sample', 'dense'), got 'lowrank'"),
    (["evaluate", "{w}/spec-a", "{w}/test.jsonl", "--task", "causal-lm", "--teacher",
      "{w}/bundle-a"], "teacher agreement needs both a teacher bundle and its proxy data"),
    (["train-specialist", "{w}/a.jsonl", "--model", "{w}/gpt2.json", "--task", "causal-lm"],
     "gpt2.json: no tokenizer found; put one beside the model or pass --tokenizer DIR"),
    (["train-specialist", "{w}/a.jsonl", "--model", "{w}/small.json", "--task", "causal-lm",
      "--tokenizer", "{w}/tok"], "the model predicts 100 ids but its tokenizer has 300"),
    (["train-specialist", "{w}/notext.jsonl", "--model", "{w}/gpt2.json", "--task",
      "causal-lm", "--tokenizer", "{w}/tok", "--max-length", "32"],
     "no text column found; expected one of"),
    (["evaluate", "{w}/spec-a", "{w}/test.jsonl", "--task", "causal-lm", "--max-length",
      "128"], "it reads at most 64 positions, but --max-length is 128"),
    (["emit-logits", "{w}/spec-a", "{w}/proxy.jsonl", "--task", "causal-lm", "--encoding",
      "sample", "--k", "8"], "--k does not apply to --encoding sample; --k is for topk"),
    (["emit-logits", "{w}/spec-a", "{w}/proxy.jsonl", "--task", "embedding", "--draws", "8"],
     "fd emit-logits: --draws does not apply to --task embedding"),
    (["emit-logits", "{w}/spec-a", "{w}/proxy.jsonl", "--task", "regression"],
     "--task must be one of classification, causal-lm, seq2seq, embedding; got 'regression'"),
    (["train-specialist", "{w}/a.jsonl", "--model", "{w}/spec-a", "--task", "embedding"],
     "fd train-specialist does not support --task embedding (it supports: emit-logits, "
     "aggregate, distill, evaluate, simulate)"),
    (["simulate", "--task", "seq2seq", "--data", "{w}/a.jsonl", "--text-column", "body",
      "--client-chars", "9"],
     "fd simulate: --text-column, --client-chars do not apply to --task seq2seq"),
    (["simulate", "--task", "seq2seq", "--source-column", "body"],
     "source_column, target_column, domain_column, label_column and split describe --data; "
     "give --data FILE"),
    (["simulate", "--task", "causal-lm", "--domain-column", "topic"],
     "domain_column, label_column and split describe --data; give --data FILE"),
    (["simulate", "--task", "causal-lm", "--poison", "0.5", "--poison-kind", "flip"],
     "poison kind must be one of ['random', 'shuffled', 'overconfident'] for a token task, "
     "got 'flip'"),
])
def test_causal_lm_errors_are_messages(lm_pipeline, tmp_path, args, fragment):
    w = lm_pipeline
    (w / "small.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16, "n_layer": 1,
                                              "n_head": 2, "vocab_size": 100}))
    (w / "notext.jsonl").write_text('{"body": "no text column here"}\n')
    if "{w}/sampled-b" in args:
        _sampled_bundle(w)
    out = tmp_path / "err-out"
    extra = [] if args[0] == "evaluate" else ["--out", out]
    result = _fd(*[a.format(w=w) for a in args], *extra)
    assert result.exit_code == 1, result.output
    assert fragment.format(w=w) in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_simulate_causal_lm_small(tmp_path):
    out = tmp_path / "sim"
    r = _fd("simulate", "--task", "causal-lm", "--num-clients", "2", "--epochs", "2",
            "--distill-epochs", "2", "--max-length", "32", "--compare-rules", "",
            "--client-chars", "40000", "--proxy-chars", "60000", "--fedavg-rounds", "2",
            "--fedavg-local-epochs", "0.5", "--rounds", "2", "--poison", "0.5",
            "--poison-kind", "shuffled", "--dp-epsilons", "4", "--out", out)
    assert r.exit_code == 0, r.output
    assert "perplexity by domain" in r.output and "membership-inference AUC" in r.output
    assert "student (confidence, round 2)" in " ".join(r.output.split())
    res = json.loads((out / "results.json").read_text())
    scores = {(s["method"], s["variant"].get("rule")): s["metrics"] for s in res["scores"]}
    assert [s["variant"] for s in res["scores"] if s["method"] == "fd"] == [
        {"rule": "confidence", "round": 2}]
    assert res["task"] == "causal-lm" and scores[("fd", "confidence")]["mean_ppl"] == [
        pytest.approx(res["student"]["mean_ppl"])]
    assert scores[("proxy_only", None)]["mean_ppl"] == [
        pytest.approx(res["proxy_only"]["mean_ppl"])]
    assert res["config"]["task"] == "causal-lm" and len(res["specialists"]) == 2
    domains = list(res["domains"])
    assert domains == ["asyncio", "email"]
    for s, own in zip(res["specialists"], domains):
        assert s["domain"] == own and set(s["ppl_by_domain"]) == set(domains)
        # each specialist knows its own domain best
        assert s["ppl_by_domain"][own] == min(s["ppl_by_domain"].values())
        assert s["uploaded_bytes"] == sum(p.stat().st_size for p in
                                          (out / "bundles" / s["client_id"]).iterdir())
        assert 0 < s["bytes_per_token"] < 40
    student = res["student"]
    assert student["round"] == 2 and student["architecture"] == "gpt2"
    # round 2: every client digested round 1's consensus and emitted again; the consensus
    # went down to both; the student continued on round 2's consensus
    first, second = res["rounds"]
    round2 = out / "rounds" / "round-2"
    consensus = read_bundle(out / "teachers" / "confidence")
    assert first["student"] == res["students_by_rule"]["confidence"]
    assert second["student"]["mean_ppl"] == student["mean_ppl"] == second["perplexity"]
    assert second["downloaded_bytes"] == 2 * sum(
        p.stat().st_size for p in (out / "teachers" / "confidence").iterdir())
    for i in range(2):
        meta = json.loads((round2 / "specialists" / f"client-{i}" / "fd.json").read_text())
        assert meta["round"] == 2 and meta["consensus"]["sha256"] == consensus.manifest_sha256
        assert second["uploaded_per_client"][i] == sum(
            p.stat().st_size for p in (round2 / "bundles" / f"client-{i}").iterdir())
    assert read_bundle(round2 / "teachers" / "confidence").manifest.producer.config[
        "round"] == 2
    continued = json.loads((round2 / "students" / "confidence" / "fd.json").read_text())
    assert continued["config"]["student"] == str(out / "students" / "confidence")
    # one of the two clients is hostile: it sends its own rows for other positions, in
    # every round
    hostile = [f"client-{i}" for i in poisoned_clients(2, 0.5, seed=0)]
    assert res["poisoned_clients"] == hostile and res["config"]["poison_kind"] == "shuffled"
    assert set(res["outliers_flagged"]) <= {"client-0", "client-1"}
    from fdcli.stages.lm import emit_token_logits

    emit_token_logits(out / "specialists" / hostile[0], out / "data" / "proxy.jsonl",
                      tmp_path / "clean", k=16, max_length=32, progress=False)
    clean = read_bundle(tmp_path / "clean").read_all().dense().argmax(-1)
    sent = read_bundle(out / "bundles" / hostile[0]).read_all().dense().argmax(-1)
    assert sorted(sent.tolist()) == sorted(clean.tolist())  # its own rows, shuffled
    # they match the positions they are sent for no more often than chance (a tiny LM's top
    # token is often the same few ids, so chance is well above zero)
    chance = float(((torch.bincount(clean) / len(clean)) ** 2).sum())
    assert float((sent == clean).double().mean()) < chance + 0.05 < 0.6
    b = res["bytes"]
    assert b["uploaded_total"] == first["uploaded_bytes"] + second["uploaded_bytes"]
    assert b["total"] == b["uploaded_total"] + b["downloaded_total"] == \
        res["curves"]["fd"][-1]["total_bytes"]
    assert [p["perplexity"] for p in res["curves"]["fd"]] == [
        first["perplexity"], second["perplexity"]]
    # what DP costs: the same clients with DP-SGD specialists, a one-shot student from them
    dp, = res["dp"]
    assert dp["epsilon"] == 4 and 2 < dp["epsilon_spent_max"] <= 4
    root = out / "dp" / "epsilon-4"
    for i in range(2):
        g = json.loads((root / "specialists" / f"client-{i}" / "fd.json").read_text())[
            "privacy"]
        config = read_bundle(root / "bundles" / f"client-{i}").manifest.producer.config
        assert config["privacy"] == g and config["train_tokens"] is None
        assert dp["noise_multipliers"][i] == g["noise_multiplier"]
        assert dp["blocks_per_document"][i] == g["blocks_per_document"] >= 1
    assert dp["uploaded_bytes"] == sum(p.stat().st_size for i in range(2) for p in
                                       (root / "bundles" / f"client-{i}").iterdir())
    assert json.loads((root / "student" / "fd.json").read_text())["task"] == "causal-lm"
    assert dp["student"]["mean_ppl"] > 1 and 0 <= dp["attack"]["student_auc"] <= 1
    report = (out / "report.md").read_text()
    assert f"| epsilon 4 (spent {dp['epsilon_spent_max']:.2f}) | " \
           f"{dp['student']['mean_ppl']:.2f} |" in report
    assert "student from DP-SGD specialists, epsilon 4" in " ".join(r.output.split())
    # a tenth of each institution's documents is held out as validation text, and every
    # round's student is scored on it (the geometric mean over the domains)
    import math

    from fdcli.data import load_local
    from fdcli.lm import text_blocks
    from fdcli.stages.lm import token_metrics

    vals = sorted((out / "data").glob("val-*.jsonl"))
    assert [v.name for v in vals] == ["val-asyncio.jsonl", "val-email.jsonl"]
    held = [json.loads(line)["text"] for line in vals[0].open()]
    own = [json.loads(line)["text"] for line in (out / "data" / "client-0.jsonl").open()]
    test = [json.loads(line)["text"] for line in (out / "data" / "test-asyncio.jsonl").open()]
    assert held and not set(held) & (set(own) | set(test))
    # 33 asyncio files: 7 test, every tenth of the other 26 from the second on: 3
    assert res["domains"]["asyncio"] == {"client": "client-0", "files": 33,
                                         "validation_files": 3}
    lm = load_lm(round2 / "students" / "confidence")
    ppl = [token_metrics(lm, text_blocks(load_local(v, whole_text_files=True), str(v),
                                         lm.tokenizer, max_length=32).blocks, 16)["perplexity"]
           for v in vals]
    assert second["validation_perplexity"] == pytest.approx(
        math.exp(sum(map(math.log, ppl)) / 2), rel=1e-3)
    assert "validation_perplexity" in first
    assert "| validation ppl |" in (out / "report.md").read_text()
    assert "| 2 | " in (out / "report.md").read_text().split("Rounds")[1]
    vocab = 2048
    # every model learned something: well below the uniform perplexity of the vocabulary
    for model in (student, res["proxy_only"], res["centralized"], *res["specialists"]):
        assert 1 < model["mean_ppl"] < 0.6 * vocab
    assert (out / "tokenizer" / "tokenizer.json").exists()
    assert read_bundle(out / "teachers" / "confidence").manifest.task == "token"
    # Flower FedAvg of the student architecture: two rounds, each a model down and up per
    # client; GPT-2 ties its output layer to its embedding, so one copy crosses per message
    fp32, q8 = res["baselines"]["fedavg"], res["baselines"]["fedavg_8bit"]
    curve = res["curves"]["fedavg"]
    assert [p["round"] for p in curve] == [0, 1, 2]
    assert curve[-1]["total_bytes"] == fp32["total_bytes"]
    params = sum(p.numel() for p in load_lm(out / "fedavg").model.parameters())
    assert 4 * params * 2 * 2 * 2 < fp32["total_bytes"] < 1.1 * 4 * params * 2 * 2 * 2
    assert 0.2 < q8["total_bytes"] / fp32["total_bytes"] < 0.35
    assert curve[-1]["perplexity"] < curve[0]["perplexity"]
    hit = res["bytes_to_student_perplexity"]
    assert hit["target_perplexity"] == student["mean_ppl"]
    assert hit["fedavg"]["reached"] == any(p["perplexity"] <= student["mean_ppl"] for p in curve)
    p = res["privacy"]
    assert [s["client_id"] for s in p["specialists"]] == ["client-0", "client-1"]
    for name in ("student", "centralized", "proxy_only", "fedavg", "fedavg_8bit"):
        assert 0 <= p[name]["auc"] <= 1 and p[name]["members"] > 0
    assert p["proxy_only"]["reference"]["auc"] == 0.5  # the reference model itself
    report = (out / "report.md").read_text()
    assert "| student (confidence, round 1) | gpt2 |" in report and \
        "| student (confidence, round 2) | gpt2 |" in report and "Membership inference" in report


def test_token_seeds_combine_by_hand(tmp_path):
    """Two seeds' seq2seq results made by hand: means, the paired differences of fd's main
    student (the one whose bytes count) from each model, seed by seed, and report.md."""
    from fdcli.stages.token_seeds import write_token_combined

    def doc(seed, fd_bleu, proxy_bleu):
        metrics = {"bleu": fd_bleu, "chrf": 30.0 + seed, "rouge_l": 0.2, "perplexity": 50.0}
        return {"config": {"seed": seed, "task": "seq2seq"}, "scores": [
            {"method": "fd", "variant": {"targets": "proxy", "round": 2}, "seeds": [seed],
             "metrics": {k: [v] for k, v in metrics.items()}, "bytes": [1000]},
            {"method": "proxy_only", "variant": {}, "seeds": [seed],
             "metrics": {k: [v] for k, v in {**metrics, "bleu": proxy_bleu,
                                              "perplexity": 60.0}.items()},
             "bytes": [None]}]}

    found = write_token_combined(tmp_path, [doc(0, 3.0, 2.0), doc(1, 5.0, 2.5)], "seq2seq")
    assert found["task"] == "seq2seq" and found["config"]["seeds"] == [0, 1]
    over = found["over_seeds"]
    assert over["main"] == "fd round=2 targets=proxy"
    assert over["methods"]["fd round=2 targets=proxy"]["bleu"]["mean"] == 4.0
    assert over["methods"]["proxy_only"]["chrf"]["values"] == [30.0, 31.0]
    paired = over["paired"]["proxy_only"]
    assert paired["bleu_difference"]["values"] == [1.0, 2.5]
    assert paired["perplexity_difference"]["mean"] == -10.0
    assert paired["bleu_difference"]["ci95"][0] < 1.75 < paired["bleu_difference"]["ci95"][1]
    report = (tmp_path / "report.md").read_text()
    assert "| proxy_only | 2.250 ± 0.354" in report
    assert json.loads((tmp_path / "results.json").read_text())["over_seeds"] == over


def test_simulate_causal_lm_over_seeds(tmp_path):
    out = tmp_path / "seeds"
    r = _fd("simulate", "--task", "causal-lm", "--num-clients", "2", "--epochs", "1",
            "--distill-epochs", "1", "--max-length", "32", "--compare-rules", "",
            "--client-chars", "20000", "--proxy-chars", "30000", "--fedavg-rounds", "1",
            "--fedavg-local-epochs", "0.5", "--rounds", "1", "--no-privacy", "--seeds", "2",
            "--seed", "3", "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["seeds"] == [3, 4] and res["runs"] == ["seed-3/results.json",
                                                                 "seed-4/results.json"]
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (3, 4)]
    over = res["over_seeds"]
    assert over["methods"][over["main"]]["mean_ppl"]["values"] == [
        pytest.approx(d["student"]["mean_ppl"]) for d in runs]
    best = [min(s["mean_ppl"] for s in d["specialists"]) for d in runs]
    assert over["best_specialist"]["mean_ppl"]["values"] == pytest.approx(best)
    assert over["paired"]["centralized"]["mean_ppl_difference"]["values"] == pytest.approx(
        [d["student"]["mean_ppl"] - d["centralized"]["mean_ppl"] for d in runs])
    assert "2 seeds" in r.output and "mean_ppl: mean ± sd" in " ".join(r.output.split())


def test_the_writers_kl_is_the_same_whether_the_stored_ids_ascend_or_not():
    """The writer's fidelity KL finds each exact id among the stored ones by a search when
    they ascend (as topk stores them) and by comparing every pair otherwise: the same KL."""
    from fdcli.bundle.writer import _sparse_kl

    clients = _clients(v=40, n=6, ks=(5, 7, 3))
    exact = aggregate_sparse(clients, torch.ones(3, 6, dtype=torch.bool), "mean")
    codec = TopKCodec(4)
    stored = codec.sparse(codec.encode_sparse(exact), 40)
    assert bool((stored.ids[:, 1:] > stored.ids[:, :-1]).all())
    flipped = SparseRows(stored.ids.flip(-1), stored.logp.flip(-1), stored.tail_logp, 40)
    kl = _sparse_kl(exact, stored)
    assert torch.equal(kl, _sparse_kl(exact, flipped))
    assert bool((kl > 0).all()) and kl.shape == (6,)
