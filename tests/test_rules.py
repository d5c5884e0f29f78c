"""Aggregation rules against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from fdcli.rules import (RULES, by_sample_count, confidence, confidence_weights, coverage,
                         entropy_reduction, mean, median, sharpen, trimmed_mean)

P1, P2 = [0.9, 0.1], [0.5, 0.5]


def probs(*clients):
    """[K, 1, C] from one distribution per client."""
    return torch.tensor(clients, dtype=torch.float64)[:, None, :]


def everyone(k, n=1):
    return torch.ones(k, n, dtype=torch.bool)


def close(t, values, tol=1e-5):
    return torch.allclose(t.flatten().double(), torch.tensor(values, dtype=torch.float64),
                          atol=tol)


def test_mean():
    assert close(mean(probs(P1, P2), everyone(2)), [0.7, 0.3])


def test_confidence_max_probability():
    # alpha = softmax([0.9, 0.5]) = [0.598688, 0.401312]
    assert close(confidence_weights(probs(P1, P2), everyone(2)), [0.598688, 0.401312])
    assert close(confidence(probs(P1, P2), everyone(2)), [0.739475, 0.260525])


def test_confidence_temperature_sharpens_towards_the_confident_client():
    # alpha = softmax([9, 5]) = [0.982014, 0.017986]
    assert close(confidence(probs(P1, P2), everyone(2), tau=0.1), [0.892806, 0.107194])


def test_confidence_negative_entropy():
    # H(P1) = 0.325083, H(P2) = 0.693147 -> alpha_1 = sigmoid(0.368064) = 0.590993
    assert close(confidence(probs(P1, P2), everyone(2), measure="neg_entropy"),
                 [0.736397, 0.263603])


def test_entropy_reduction_is_ds_fl_softmax_of_the_mean():
    # softmax([0.7, 0.3] / 0.1) = softmax([7, 3])
    assert close(entropy_reduction(probs(P1, P2), everyone(2)), [0.982014, 0.017986])


def test_weighted_by_sample_count():
    assert close(by_sample_count(probs(P1, P2), everyone(2), [3, 1]), [0.8, 0.2])


def test_median_odd_and_even():
    assert close(median(probs(P1, P2, [0.6, 0.4]), everyone(3)), [0.6, 0.4])
    assert close(median(probs(P1, P2), everyone(2)), [0.7, 0.3])


def test_trimmed_mean_drops_a_poisoned_client():
    clients = probs([0.9, 0.1], [0.8, 0.2], [0.85, 0.15], [0.0, 1.0], [0.7, 0.3])
    assert close(trimmed_mean(clients, everyone(5), trim=0.2), [0.783333, 0.216667])
    # the plain mean is dragged by the poisoned client
    assert close(mean(clients, everyone(5)), [0.65, 0.35])


def test_each_example_combines_only_the_clients_that_have_it():
    p = torch.tensor([[[0.9, 0.1], [0.2, 0.8]],
                      [[0.5, 0.5], [0.9, 0.1]]], dtype=torch.float64)
    present = torch.tensor([[True, True], [True, False]])
    for name, rule in RULES.items():
        kwargs = {"weighted": {"counts": [1, 1]},
                  "coverage": {"counts": [[1, 1], [1, 1]]},
                  "gnmax": {"sigma": 1e-9}}.get(name, {})
        out = rule(p, present, **kwargs)
        assert out.shape == (2, 2)
        assert torch.allclose(out.sum(-1), torch.ones(2, dtype=torch.float64))
        if name == "gnmax":  # a vote: the one client present's top class
            assert out[1].tolist() == [0.0, 1.0]
        elif name != "entropy-reduction":
            assert torch.allclose(out[1], torch.tensor([0.2, 0.8], dtype=torch.float64)), name


def test_example_without_any_client_is_refused():
    with pytest.raises(ValueError, match="at least one client"):
        mean(probs(P1, P2), torch.zeros(2, 1, dtype=torch.bool))


@pytest.mark.parametrize("call,message", [
    (lambda: confidence(probs(P1, P2), everyone(2), measure="vibes"), "confidence measure"),
    (lambda: confidence(probs(P1, P2), everyone(2), tau=0), "tau must be positive"),
    (lambda: trimmed_mean(probs(P1, P2), everyone(2), trim=0.5), "trim must be in"),
    (lambda: by_sample_count(probs(P1, P2), everyone(2), [1]), "counts must be 2"),
])
def test_bad_parameters(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_coverage_weights_each_class_by_who_saw_it():
    # client 1 saw only class 0 (3 examples), client 2 saw 1 of class 0 and 4 of class 1:
    # class 0 weights [3/4, 1/4], class 1 weights [0, 1]
    counts = [[3, 0], [1, 4]]
    got = coverage(probs(P1, P2), everyone(2), counts, prior_correction=False)
    # raw: c0 = 0.75 * 0.9 + 0.25 * 0.5 = 0.8, c1 = 0 * 0.1 + 1 * 0.5 = 0.5 -> /1.3
    assert close(got, [0.8 / 1.3, 0.5 / 1.3])


def test_coverage_prior_correction_undoes_a_client_label_skew():
    counts = [[3, 0], [1, 4]]
    # priors with +1 smoothing: client 1 [4/5, 1/5], client 2 [2/7, 5/7]
    # client 1: [0.9 / 0.8, 0.1 / 0.2] = [1.125, 0.5] -> [0.692308, 0.307692]
    # client 2: [0.5 * 7 / 2, 0.5 * 7 / 5] = [1.75, 0.7] -> [0.714286, 0.285714]
    # c0 = 0.75 * 0.692308 + 0.25 * 0.714286 = 0.697802; c1 = 0.285714
    got = coverage(probs(P1, P2), everyone(2), counts)
    assert close(got, [0.697802 / 0.983516, 0.285714 / 0.983516])


def test_coverage_class_nobody_saw_is_averaged_and_absent_clients_do_not_count():
    counts = [[2, 0], [0, 0]]
    # class 1: no one saw it -> even weights [0.5, 0.5]; class 0: client 1 alone
    got = coverage(probs(P1, P2), everyone(2), counts, prior_correction=False)
    assert close(got, [0.9 / 1.2, 0.3 / 1.2])
    present = torch.tensor([[False], [True]])
    # client 1 is absent: class 0 falls back to the present client
    assert close(coverage(probs(P1, P2), present, counts, prior_correction=False), [0.5, 0.5])


def test_coverage_refuses_bad_counts_and_token_rows():
    with pytest.raises(ValueError, match=r"counts must be \[2, 2\]"):
        coverage(probs(P1, P2), everyone(2), [[1, 2, 3], [1, 2, 3]])
    with pytest.raises(ValueError, match="non-negative"):
        coverage(probs(P1, P2), everyone(2), [[1, -1], [1, 2]])
    with pytest.raises(ValueError, match="classification bundles"):
        coverage(probs(P1, P2), everyone(2), [[1, 1], [1, 1]], mult=torch.ones(1, 2))
    assert RULES["coverage"] is coverage


def test_sharpen_is_entropy_reduction_after_any_rule():
    combined = torch.tensor([[0.7, 0.3]], dtype=torch.float64)
    assert close(sharpen(combined, 0.1), [0.982014, 0.017986])  # softmax([7, 3])
    assert close(sharpen(combined, 1.0), [0.598688, 0.401312])  # softmax([0.7, 0.3])
    assert torch.allclose(sharpen(mean(probs(P1, P2), everyone(2)), 0.1),
                          entropy_reduction(probs(P1, P2), everyone(2)))
    with pytest.raises(ValueError, match="temperature must be positive"):
        sharpen(combined, 0.0)
