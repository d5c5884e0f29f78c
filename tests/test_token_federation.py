"""The token tasks in the federation: the user's own corpus for ``fd simulate --task
causal-lm --data FILE`` (split by a domain column or by Dirichlet over a label column)."""

from __future__ import annotations

import json

import pytest

from fdcli.data import DataError
from fdcli.stages.token_corpus import TEST_EVERY, dirichlet_domains, split_documents

from .helpers import fd as _fd
from .test_token import _corpus

WORDS = {"legal": ["court", "ruling", "appeal", "judge", "statute", "party", "claim", "order"],
         "clinic": ["patient", "dose", "scan", "nurse", "ward", "fever", "blood", "chart"],
         "bank": ["loan", "rate", "credit", "deposit", "branch", "teller", "asset", "fund"]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_documents_by_domain():
    domains = ["a"] * 30 + ["b"] * 20 + ["c"] * 7
    names, private, tests, _, proxy = split_documents(domains, 2, proxy_fraction=0.2, seed=0,
                                                      where="x.jsonl", what="'domain' value")
    assert names == ["a", "b"]  # the largest domains; "c" goes to the proxy whole
    assert set(range(50, 57)) <= set(proxy)
    for docs, own, test, n in zip((range(30), range(30, 50)), private, tests, (30, 20)):
        shared = [i for i in proxy if i in docs]
        assert len(shared) == round(n * 0.2)
        assert set(own) | set(test) | set(shared) == set(docs)
        assert not set(own) & set(test) and not set(own) & set(shared)
        assert len(test) == -(-(n - len(shared)) // TEST_EVERY)
    again = split_documents(domains, 2, proxy_fraction=0.2, seed=0, where="x", what="d")
    assert again == (names, private, tests, [[], []], proxy)
    other = split_documents(domains, 2, proxy_fraction=0.2, seed=1, where="x", what="d")
    assert other[1] != private


@pytest.mark.parametrize("domains, clients, fraction, fragment", [
    (["a"] * 10, 2, 0.2, "x.jsonl: 1 'domain' value(s) (a) for 2 institutions"),
    (["a"] * 10 + ["b"] * 1, 2, 0.2, "'domain' value 'b' has 1 document(s), 1 after giving"),
    (["a"] * 10 + [None], 1, 0.2, "document 10 has no 'domain' value"),
    (["a"] * 10, 1, 0.0, "no document is left for the proxy"),
])
def test_split_documents_refuses_what_cannot_be_split(domains, clients, fraction, fragment):
    with pytest.raises(DataError, match=None) as caught:
        split_documents(domains, clients, proxy_fraction=fraction, seed=0, where="x.jsonl",
                        what="'domain' value")
    assert fragment in str(caught.value)


def test_dirichlet_domains_follow_alpha():
    labels = [i % 4 for i in range(400)]
    skewed = dirichlet_domains(labels, 4, 0.05, seed=0)
    even = dirichlet_domains(labels, 4, 100.0, seed=0)
    assert set(even) == {f"share-{i}" for i in range(4)}

    def purity(assigned):  # the share of each client's documents in its commonest label
        out = []
        for c in set(assigned):
            mine = [labels[i] for i, a in enumerate(assigned) if a == c]
            out.append(max(mine.count(y) for y in set(mine)) / len(mine))
        return sum(out) / len(out)

    assert purity(even) < 0.35 < 0.55 < purity(skewed)  # 4 labels: 0.25 is an even mix


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three domains of documents; two institutions, so the third is the proxy's."""
    root = tmp_path_factory.mktemp("user-corpus")
    rows = [{"body": doc, "topic": topic, "kind": k % 2}
            for k, (topic, words) in enumerate(WORDS.items())
            for doc in _corpus(k + 1, 30 if topic != "bank" else 20, words)]
    return _write(root / "corpus.jsonl", rows)


def test_simulate_causal_lm_on_the_users_corpus(corpus, tmp_path):
    out = tmp_path / "sim"
    r = _fd("simulate", "--task", "causal-lm", "--data", corpus, "--text-column", "body",
            "--domain-column", "topic", "--num-clients", "2", "--epochs", "2",
            "--distill-epochs", "2", "--max-length", "32", "--compare-rules", "",
            "--fedavg-rounds", "1", "--fedavg-local-epochs", "0.5", "--no-privacy",
            "--rounds", "1", "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["data"] == str(corpus) and res["config"]["domain_column"] == "topic"
    assert list(res["domains"]) == ["clinic", "legal"]  # 30 documents each, ties by name
    assert res["domains"]["clinic"] == {"client": "client-0", "documents": 17,
                                        "test_documents": 5, "validation_documents": 2}
    proxy = [json.loads(line)["text"] for line in (out / "data" / "proxy.jsonl").open()]
    # all 20 bank documents, and 6 of each institution's 30
    assert len(proxy) == 20 + 6 + 6
    client0 = [json.loads(line)["text"] for line in (out / "data" / "client-0.jsonl").open()]
    assert all("patient" in d or "nurse" in d or "dose" in d for d in client0)
    assert not set(client0) & set(proxy)
    for s, own in zip(res["specialists"], ("clinic", "legal")):
        assert s["domain"] == own and set(s["ppl_by_domain"]) == {"clinic", "legal"}
        assert s["ppl_by_domain"][own] == min(s["ppl_by_domain"].values())
    assert res["student"]["mean_ppl"] < res["proxy_only"]["mean_ppl"] * 1.5


@pytest.mark.parametrize("args, fragment", [
    (["--text-column", "body"], "nothing says which institution holds each document"),
    (["--text-column", "body", "--domain-column", "region"],
     "domain column 'region' not found"),
    (["--domain-column", "topic"], "no text column found"),
    (["--text-column", "body", "--label-column", "kind", "--num-clients", "40"],
     "for 40 institutions"),
])
def test_simulate_causal_lm_refuses_a_corpus_it_cannot_split(corpus, tmp_path, args,
                                                             fragment):
    out = tmp_path / "sim"
    r = _fd("simulate", "--task", "causal-lm", "--data", corpus, *args, "--out", out)
    assert r.exit_code == 1, r.output
    assert fragment in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and not out.exists()


def test_teacher_next_tokens_by_hand(tmp_path):
    """A consensus's perplexity and accuracy on the proxy's next tokens, against the same
    sums done by hand on its dense rows (each block's last position predicts nothing)."""
    import math

    import torch

    from fdcli.bundle import BundleWriter, DenseCodec, read_bundle
    from fdcli.stages.token_evidence import teacher_next_tokens

    g = torch.Generator().manual_seed(0)
    blocks = [torch.randint(0, 12, (n,), generator=g).tolist() for n in (5, 3, 7, 2)]
    logits = torch.randn(sum(map(len, blocks)), 12, generator=g)
    logits[0, blocks[0][1]] += 20.0  # one sure hit
    with BundleWriter(tmp_path / "t", codec=DenseCodec(), task="token", num_classes=12,
                      label_fingerprint="sha256:" + "a" * 64,
                      proxy_fingerprint="sha256:" + "b" * 64, client_id="c",
                      model_fingerprint="sha256:" + "c" * 64, max_shard_rows=6) as w:
        w.add(range(4), logits, row_counts=[len(b) for b in blocks])
    logp = read_bundle(tmp_path / "t").read_all().dense()
    nll, hits, count, row = 0.0, 0, 0, 0
    for b in blocks:
        for j in range(len(b) - 1):
            nll -= float(logp[row + j, b[j + 1]])
            hits += int(logp[row + j].argmax()) == b[j + 1]
            count += 1
        row += len(b)
    got = teacher_next_tokens(tmp_path / "t", blocks)
    assert count == 4 + 2 + 6 + 1 and hits >= 1
    assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert got["accuracy"] == pytest.approx(hits / count)


def _institutions_folder(root):
    """A folder of one dataset per institution: two jsonl files of pairs, a sub-folder of
    csv files (one institution), a hidden file and a readme that is not data."""
    import csv

    root.mkdir()
    for k, (topic, words) in enumerate(WORDS.items()):
        pairs = [{"input": doc, "output": " ".join(doc.split()[:3])}
                 for doc in _corpus(k + 1, 30 if topic != "bank" else 12, words)]
        if topic == "bank":
            (root / "bank").mkdir()
            for part in range(2):
                with (root / "bank" / f"part-{part}.csv").open("w", newline="") as fh:
                    w = csv.DictWriter(fh, ["input", "output"])
                    w.writeheader()
                    w.writerows(pairs[part::2])
        else:
            _write(root / f"{topic}.jsonl", pairs)
    _write(root / ".hidden.jsonl", [{"input": "x", "output": "y"}])
    (root / "README.md").write_text("not data")
    return root


def test_split_user_data_reads_a_folder_of_institutions(tmp_path):
    from fdcli.stages.simulate_seq2seq import write_user_pairs
    from fdcli.stages.token_corpus import institution_files

    folder = _institutions_folder(tmp_path / "sites")
    found = institution_files(folder)
    assert list(found) == ["bank", "clinic", "legal"]
    assert [f.name for f in found["bank"]] == ["part-0.csv", "part-1.csv"]
    corpus = write_user_pairs(tmp_path / "out", folder, num_clients=2, seed=0)
    # the two largest institutions (30 pairs each) hold data; bank's 12 go to the proxy
    assert list(corpus["domains"]) == ["clinic", "legal"]
    assert corpus["domains"]["legal"] == {"client": "client-1", "documents": 19,
                                          "test_documents": 5}
    proxy = [json.loads(line) for line in corpus["proxy"].open()]
    assert len(proxy) == 12 + 6 + 6 and set(proxy[0]) == {"source", "target"}
    legal = [json.loads(line) for line in corpus["clients"][1].open()]
    assert all(r["target"] == " ".join(r["source"].split()[:3]) for r in legal)
    assert all(w in WORDS["legal"] for r in legal for w in r["source"].rstrip(".").split())
    assert (tmp_path / "out" / "tokenizer").is_dir() and set(corpus["configs"]) == {
        "t5-tiny", "t5-mini"}


def test_split_user_data_text_files_hold_a_document_per_paragraph(tmp_path):
    from fdcli.stages.token_corpus import split_user_data, text_column_of

    folder = tmp_path / "sites"
    folder.mkdir()
    for name, n in (("north", 12), ("south", 10)):
        (folder / f"{name}.txt").write_text("\n\n".join(
            f"{name} note {i}\nsecond line" for i in range(n)) + "\n\n\n")
    docs = split_user_data(folder, text_column_of(None), num_clients=2, proxy_fraction=0.25)
    assert docs.names == ["north", "south"] and len(docs.columns["text"]) == 22
    assert docs.columns["text"][0] == "north note 0\nsecond line"
    assert sorted(docs.private[0] + docs.tests[0] + [i for i in docs.proxy if i < 12]) == \
        list(range(12))


@pytest.mark.parametrize("make, args, fragment", [
    (lambda p: _institutions_folder(p), ["--domain-column", "topic"],
     "a folder of one dataset per institution; --domain-column and --label-column do not "
     "apply"),
    (lambda p: (p.mkdir(), (p / "notes.md").write_text("x")), [],
     "a folder with no data files; expected one file"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("one\n\ntwo")), [],
     "a.txt: no target column found"),
    (lambda p: (p.mkdir(), _write(p / "a.jsonl", [{"input": "x", "answer": "y"}])),
     ["--target-column", "output"], "a.jsonl: target column 'output' not found"),
])
def test_simulate_seq2seq_refuses_data_it_cannot_split(tmp_path, make, args, fragment):
    make(tmp_path / "sites")
    out = tmp_path / "sim"
    r = _fd("simulate", "--task", "seq2seq", "--data", tmp_path / "sites", *args,
            "--out", out)
    assert r.exit_code == 1, r.output
    assert fragment in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and not out.exists()


def test_simulate_seq2seq_on_the_users_pairs(tmp_path):
    """fd simulate --task seq2seq --data: a folder of institutions, the whole comparison."""
    folder = _institutions_folder(tmp_path / "sites")
    out = tmp_path / "sim"
    r = _fd("simulate", "--task", "seq2seq", "--data", folder, "--num-clients", "2",
            "--epochs", "1", "--distill-epochs", "1", "--fedavg-rounds", "1",
            "--fedavg-local-epochs", "1", "--no-privacy", "--rounds", "1", "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["data"] == str(folder) and res["config"]["proxy_fraction"] == 0.2
    assert list(res["domains"]) == ["clinic", "legal"]
    # 19 private pairs, of which every tenth from the second on (2) are validation
    assert res["domains"]["clinic"] == {"client": "client-0", "documents": 17,
                                        "test_documents": 5, "validation_documents": 2,
                                        "train_pairs": 17, "test_pairs": 5}
    val = [json.loads(line) for line in (out / "data" / "val-0-clinic.jsonl").open()]
    own = [json.loads(line) for line in (out / "data" / "client-0.jsonl").open()]
    assert len(val) == 2 and len(own) == 17 and not {r["source"] for r in val} & {
        r["source"] for r in own}
    assert res["config"]["validation_fraction"] == 0.1
    assert res["rounds"][0]["validation_perplexity"] > 1
    # the validation split also gets the generation scores, the student's own greedy
    # decodes of the held-out pairs against their targets
    from fdcli.data import load_local
    from fdcli.seq2seq import generate, load_seq2seq, text_metrics, text_pairs

    student = load_seq2seq(out / "students" / "confidence")  # round 1's, the only one
    held = sorted((out / "data").glob("val-*.jsonl"))
    assert len(held) == 2  # one per institution
    pairs = [text_pairs(load_local(v), str(v), student.tokenizer, max_source_length=128,
                        max_target_length=32) for v in held]
    written = [h for p in pairs for h in generate(student, p.sources, batch_size=64,
                                                   max_new_tokens=32)]
    by_hand = text_metrics(written, [t for p in pairs for t in p.target_texts])
    assert len(written) == sum(len(p.sources) for p in pairs) >= 3
    for key in ("bleu", "chrf", "rouge_l"):
        assert res["rounds"][0][f"validation_{key}"] == pytest.approx(by_hand[key], abs=0.01)
    assert res["proxy_pairs"] == 24
    for s, own in zip(res["specialists"], ("clinic", "legal")):
        assert s["domain"] == own and set(s["by_domain"]) == {"clinic", "legal"}
    for model in (res["student"], res["proxy_only"], res["centralized"]):
        assert 1 < model["union"]["perplexity"] < float("inf")
    assert "clinic" in (out / "report.md").read_text()


def test_validation_is_taken_from_what_an_institution_keeps():
    from fdcli.stages.token_corpus import every_nth, stdlib_files

    domains = ["a"] * 40 + ["b"] * 10
    names, private, tests, vals, proxy = split_documents(
        domains, 2, proxy_fraction=0.25, seed=0, where="x", what="d", validation_fraction=0.1)
    # a: 10 to the proxy, 6 of 30 to test, every tenth of the other 24 from the second: 3
    assert [len(v) for v in vals] == [3, 1] and [len(p) for p in private] == [21, 5]
    for docs, own, test, val in zip((range(40), range(40, 50)), private, tests, vals):
        assert not set(val) & (set(own) | set(test) | set(proxy))
        assert set(own) | set(test) | set(val) | {i for i in proxy if i in docs} == set(docs)
    # without validation the split is the one the earlier versions made
    again = split_documents(domains, 2, proxy_fraction=0.25, seed=0, where="x", what="d")
    assert again[2] == tests and again[3] == [[], []] and sorted(again[1][0]) == sorted(
        private[0] + vals[0])
    assert every_nth(list(range(10)), 0.0) == [] and every_nth(list(range(10)), 0.5) == [
        1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        every_nth([1, 2], 1.0)
    files = [f"f{i:02d}.py" for i in range(23)]
    own, val, test = stdlib_files(files, 0.1)
    assert test == files[::5] and len(val) == 2 and len(own) == 23 - 5 - 2
    assert stdlib_files(files, 0.0) == ([f for f in files if f not in files[::5]], [],
                                        files[::5])
