"""Membership-inference attacks: the pure metrics, and the attacks on real tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fdcli.privacy import (attack_metrics, label_matched_weights, loss_threshold_attack,
                           reference_attack)

from .helpers import fd


def test_attack_metrics_by_hand():
    # members score 3, 4; non-members 1, 2, 5: one non-member outranks both members
    m = attack_metrics([3.0, 4.0], [1.0, 2.0, 5.0])
    assert m["auc"] == pytest.approx(4 / 6)
    assert m["tpr_at_1pct_fpr"] == 0.0  # any threshold that catches a member lets 5.0 in
    assert (m["members"], m["nonmembers"]) == (2, 3)
    perfect = attack_metrics([5.0, 6.0], [1.0, 2.0])
    assert perfect["auc"] == 1.0 and perfect["tpr_at_1pct_fpr"] == 1.0 == \
        perfect["tpr_at_01pct_fpr"]


def test_attack_on_identical_distributions_is_near_chance():
    rng = np.random.default_rng(0)
    m = loss_threshold_attack(rng.exponential(1.0, 3000), rng.exponential(1.0, 3000))
    assert abs(m["auc"] - 0.5) < 0.03
    assert m["tpr_at_1pct_fpr"] < 0.05


def test_reference_attack_discounts_examples_that_are_just_easy():
    rng = np.random.default_rng(1)
    difficulty = rng.exponential(1.0, 4000)
    members, nonmembers = difficulty[:2000], difficulty[2000:] + 0.5  # members happen easier
    refs_m = [members + rng.normal(0, 0.01, 2000) for _ in range(2)]
    refs_n = [nonmembers + rng.normal(0, 0.01, 2000) for _ in range(2)]
    assert loss_threshold_attack(members, nonmembers)["auc"] > 0.6
    assert abs(reference_attack(members, nonmembers, refs_m, refs_n)["auc"] - 0.5) < 0.05
    # a model that memorised its members: lower loss than the references on exactly them
    assert reference_attack(members - 0.3, nonmembers, refs_m, refs_n)["auc"] > 0.95


def test_label_matched_weights_by_hand():
    w = label_matched_weights([0, 0, 0, 1], [0, 1, 1, 2])
    # members: 3/4 label 0, 1/4 label 1; non-members: 1/4, 2/4, 1/4
    assert w.tolist() == pytest.approx([3.0, 0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="no non-member shares a label"):
        label_matched_weights([0, 0], [1, 2])


def test_label_matching_removes_an_attack_on_label_shift_alone():
    """Members are all label 0; non-members are half label 0 (same losses as the members)
    and half label 1 (which the model never learnt: high loss). Unweighted, the attack
    scores the shift; weighted to the members' labels it is at chance."""
    rng = np.random.default_rng(2)
    members = rng.exponential(1.0, 2000)
    nonmembers = np.concatenate([rng.exponential(1.0, 2000), 5 + rng.exponential(1.0, 2000)])
    labels_n = np.array([0] * 2000 + [1] * 2000)
    assert loss_threshold_attack(members, nonmembers)["auc"] > 0.7
    w = label_matched_weights(np.zeros(2000, dtype=int), labels_n)
    matched = loss_threshold_attack(members, nonmembers, w)
    assert abs(matched["auc"] - 0.5) < 0.03
    assert matched["nonmembers_effective"] == pytest.approx(2000)
    with pytest.raises(ValueError, match="non-member weights must be 4000"):
        loss_threshold_attack(members, nonmembers, w[:10])


def test_attack_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs members and non-members; got 0 and 2"):
        attack_metrics([], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"reference losses must be \[models, examples\]"):
        reference_attack([1.0], [2.0], [[1.0, 2.0]], [[2.0]])


@pytest.fixture(scope="module")
def digits_sets(tmp_path_factory):
    from fdcli.stages.simulate import ARCHITECTURES, digits_dataset

    root = tmp_path_factory.mktemp("mia")
    ds = digits_dataset().shuffle(seed=0)
    parts = {"members": ds.select(range(0, 60)), "nonmembers": ds.select(range(60, 120)),
             "population": ds.select(range(120, 420)),
             "population2": ds.select(range(420, 720))}
    for name, part in parts.items():
        part.save_to_disk(str(root / name))
    (root / "resnet.json").write_text(json.dumps(ARCHITECTURES["resnet"]))
    return root


def _train(root, data, out, epochs):
    r = fd(*["train-specialist", str(root / data), "--model",
                            str(root / "resnet.json"), "--epochs", str(epochs), "--lr", "3e-3",
                            "--batch-size", "16", "--out", str(root / out), "--json"])
    assert r.exit_code == 0, r.output


def _mia(root, model, *refs):
    args = ["evaluate", str(root / model), str(root / "nonmembers"), "--mia", "--members",
            str(root / "members"), "--nonmembers", str(root / "nonmembers"), "--json"]
    for ref in refs:
        args += ["--reference", str(root / ref)]
    r = fd(*args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_mia_on_real_models(digits_sets):
    root = digits_sets
    _train(root, "members", "overfit", 80)        # memorises its 60 members
    _train(root, "population", "outsider", 15)    # never saw members or non-members
    _train(root, "population2", "reference", 15)
    overfit = _mia(root, "overfit", "reference")
    outsider = _mia(root, "outsider", "reference")
    assert overfit["mia_loss_threshold_auc"] > 0.75
    assert overfit["mia_reference_auc"] > 0.75
    assert abs(outsider["mia_loss_threshold_auc"] - 0.5) < 0.15
    assert abs(outsider["mia_reference_auc"] - 0.5) < 0.15
    assert overfit["mia_loss_threshold_members"] == 60
    for key in ("tpr_at_1pct_fpr", "tpr_at_01pct_fpr"):
        assert 0 <= overfit[f"mia_loss_threshold_{key}"] <= 1


def test_mia_needs_both_sets(digits_sets):
    r = fd(*["evaluate", str(digits_sets / "members"),
                            str(digits_sets / "nonmembers"), "--mia"])
    assert r.exit_code == 1
    assert "--mia needs --members" in " ".join(r.output.split())
