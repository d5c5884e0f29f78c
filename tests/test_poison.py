"""Poisoned clients (fdcli.poison), the rules under attack, and fd simulate --poison."""

from __future__ import annotations

import json

import pytest
import torch

from fdcli.bundle import read_bundle, verify_bundle
from fdcli.errors import FdError
from fdcli.poison import poison_bundle, poison_logits, poisoned_clients
from fdcli.rules import RULES, consensus_distance

from .test_trust import client_bundle, run


def _logp(n=50, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, c, generator=g) * 3, -1)


def test_each_kind_does_what_it_says():
    logp = _logp()
    g = torch.Generator().manual_seed(1)
    own = logp.argmax(-1)
    flipped = poison_logits(logp, "flip", g)
    assert torch.equal(flipped.argmax(-1), (own + 1) % 5)
    assert torch.allclose(flipped.exp().sum(-1), torch.ones(50))
    sure = torch.softmax(poison_logits(logp, "overconfident", g), -1)
    assert bool((sure.max(-1).values > 0.999).all())
    assert bool((sure.argmax(-1) != own).all())
    noise = poison_logits(logp, "random", g)
    assert noise.shape == (50, 5) and not torch.allclose(noise, logp)
    with pytest.raises(ValueError, match="poison kind must be one of"):
        poison_logits(logp, "subtle", g)


def test_which_clients_are_poisoned():
    chosen = poisoned_clients(10, 0.2, seed=0)
    assert len(chosen) == 2 and chosen == sorted(chosen) == poisoned_clients(10, 0.2, seed=0)
    assert poisoned_clients(10, 0.0) == [] and len(poisoned_clients(10, 0.3)) == 3
    with pytest.raises(ValueError):
        poisoned_clients(10, 1.0)


def test_poison_bundle_rewrites_in_place(tmp_path):
    path = client_bundle(tmp_path / "b", "hospital", seed=3)
    before = read_bundle(path).read_all().dense().argmax(-1)
    poison_bundle(path, "flip")
    assert verify_bundle(path).ok
    reader = read_bundle(path)
    assert reader.manifest.producer.client_id == "hospital"
    assert torch.equal(reader.read_all().dense().argmax(-1), (before + 1) % 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # nothing left beside it


def test_overconfident_clients_capture_the_confidence_rule_but_not_the_median():
    """Eight honest clients that are right but unsure, two certain and wrong."""
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 5, (200,), generator=g)
    honest = [torch.softmax(torch.nn.functional.one_hot(truth, 5) * 1.0
                            + torch.randn(200, 5, generator=g), -1) for _ in range(8)]
    evil = [torch.softmax(poison_logits(h.log(), "overconfident", g), -1) for h in honest[:2]]
    probs = torch.stack(honest + evil).double()
    present = torch.ones(10, 200, dtype=torch.bool)
    acc = {name: float((RULES[name](probs, present).argmax(-1) == truth).double().mean())
           for name in ("confidence", "mean", "median")}
    clean = float((RULES["median"](probs[:8], present[:8]).argmax(-1) == truth).double().mean())
    assert acc["confidence"] < clean - 0.3 and acc["mean"] < clean - 0.1, (acc, clean)
    assert acc["median"] > clean - 0.05, (acc, clean)
    tv, agree = consensus_distance(probs, present)
    assert bool((tv[8:].mean(1) > tv[:8].mean(1).max()).all())
    rate = agree.double().mean(1)
    assert float(rate[8:].max()) < float(rate[:8].min()) - 0.15, rate


def test_simulate_with_poisoned_clients(tmp_path):
    result = run("simulate", "--out", tmp_path / "sim", "--num-clients", 3, "--epochs", 1,
                 "--distill-epochs", 1, "--rounds", 1, "--rule", "median",
                 "--compare-rules", "", "--baselines", "", "--no-privacy", "--poison", 0.34,
                 "--poison-kind", "overconfident", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results["config"]["poison"] == 0.34
    assert results["config"]["poison_kind"] == "overconfident"
    assert len(results["poisoned_clients"]) == 1
    # an overconfident client sits far from the median consensus: the aggregate flags it
    assert results["outliers_flagged"] == results["poisoned_clients"]
    bad = results["poisoned_clients"][0]
    block = read_bundle(tmp_path / "sim" / "bundles" / bad).read_all()
    assert bool((block.dense().exp().max(-1).values > 0.999).all())
    result = run("simulate", "--out", tmp_path / "x", "--poison-kind", "subtle")
    assert result.exit_code == 1 and "poison kind must be one of" in result.stderr
    assert not (tmp_path / "x").exists()


def _token_bundle(path, vocab=50, seed=0):
    """A top-4 token bundle of 30 examples of 5-9 rows each, peaked on known ids."""
    from fdcli.bundle import BundleWriter, TopKCodec

    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(5, 10, (30,), generator=g)
    rows = int(counts.sum())
    logits = torch.randn(rows, vocab, generator=g)
    logits[torch.arange(rows), torch.randint(0, vocab, (rows,), generator=g)] += 6.0
    with BundleWriter(path, codec=TopKCodec(4), task="token", num_classes=vocab,
                      label_fingerprint="sha256:" + "a" * 64,
                      proxy_fingerprint="sha256:" + "b" * 64,
                      client_id="lab", model_fingerprint="sha256:" + "c" * 64,
                      config={"task": "causal-lm", "round": 2}) as w:
        w.add(range(30), logits, row_counts=counts)
    return path


@pytest.mark.parametrize("kind", ["random", "shuffled", "overconfident"])
def test_poison_a_token_bundle(tmp_path, kind, monkeypatch):
    import fdcli.poison

    monkeypatch.setattr(fdcli.poison, "TOKEN_ROWS_AT_ONCE", 64)  # several groups per shard
    path = _token_bundle(tmp_path / "b")
    before = read_bundle(path)
    block = before.read_all()
    top = block.dense().argmax(-1)
    poison_bundle(path, kind, seed=5)
    assert verify_bundle(path).ok
    after = read_bundle(path)
    m, n = before.manifest, after.manifest
    assert (n.task, n.producer.client_id, n.proxy_fingerprint, n.label_fingerprint,
            n.encoding, n.producer.config) == (m.task, "lab", m.proxy_fingerprint,
                                               m.label_fingerprint, m.encoding,
                                               m.producer.config)
    poisoned = after.read_all()
    assert torch.equal(poisoned.example_ids, block.example_ids)
    assert torch.equal(poisoned.row_offsets, block.row_offsets)  # every row where it was
    p = poisoned.dense().exp()
    if kind == "overconfident":  # certain, and never of the client's own token
        assert bool((p.max(-1).values > 0.99).all())
        assert not bool((p.argmax(-1) == top).any())
    elif kind == "shuffled":  # the same distributions, sent for other rows
        assert sorted(p.argmax(-1).tolist()) == sorted(top.tolist())
        assert float((p.argmax(-1) == top).double().mean()) < 0.2
    else:
        assert float((p.argmax(-1) == top).double().mean()) < 0.2


def test_token_bundles_refuse_flip(tmp_path):
    path = _token_bundle(tmp_path / "b")
    with pytest.raises(FdError, match=r"one of \['random', 'shuffled', 'overconfident'\], "
                                      r"got 'flip'"):
        poison_bundle(path, "flip")
    assert verify_bundle(path).ok
