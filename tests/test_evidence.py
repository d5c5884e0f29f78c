"""What makes fd simulate's figures evidence: a validation split held out from everyone,
choices made on it (the coordinator's round, FedAvg's tuning), FedProx, and runs at several
seeds combined into intervals and paired differences."""

from __future__ import annotations

import json

import pytest
import torch

from fdcli.results import interval
from fdcli.stages.seeds import combine

from .helpers import fd as run


def test_partition_holds_out_a_validation_split(tmp_path):
    import datasets

    from fdcli.stages.partition import partition
    from fdcli.stages.simulate import digits_dataset

    digits = digits_dataset()
    with_val = partition("digits", tmp_path / "a", num_clients=3, dataset=digits)
    without = partition("digits", tmp_path / "b", num_clients=3, validation_fraction=0,
                        dataset=digits)
    assert with_val["sizes"]["validation"] == round(1797 * 0.1) == 180
    assert without["sizes"]["validation"] == 0 and not (tmp_path / "b" / "validation").exists()
    assert sum(with_val["sizes"]["clients"]) == sum(without["sizes"]["clients"]) - 180

    def rows(folder):
        ds = datasets.load_from_disk(str(folder))
        return {(image.tobytes(), label) for image, label in zip(ds["image"], ds["label"])}

    a = {name: rows(tmp_path / "a" / name) for name in
         ["test", "proxy-labels", "validation", *(f"client-{i}" for i in range(3))]}
    b_test, b_proxy = rows(tmp_path / "b" / "test"), rows(tmp_path / "b" / "proxy-labels")
    assert a["test"] == b_test and a["proxy-labels"] == b_proxy  # unchanged by validation
    assert len(a["validation"]) > 150  # a few digits repeat exactly
    others = set().union(*(v for k, v in a.items() if k != "validation"))
    assert not a["validation"] & others
    assert json.loads((tmp_path / "a" / "partition.json").read_text())["config"][
        "validation_fraction"] == 0.1
    with pytest.raises(ValueError, match="must sum below 1; got 0.2, 0.2 and 0.7"):
        partition("digits", tmp_path / "c", validation_fraction=0.7, dataset=digits)


def test_interval_is_the_student_t_interval_of_the_mean():
    found = interval([1.0, 2.0, 3.0])
    assert found["mean"] == 2.0 and found["std"] == 1.0 and found["n"] == 3
    half = 4.302652729911275 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert found["ci95"] == pytest.approx([2 - half, 2 + half])
    assert interval([0.5])["ci95"] == [None, None] and interval([0.5])["std"] == 0.0
    assert interval([])["n"] == 0 and interval([])["mean"] is None


def _doc(seed, fd_acc, avg_acc, fd_hit, avg_hit):
    def hit(b):
        return {"reached": b is not None, "bytes": b, "seconds": b and b / 1000,
                "cpu_seconds": b and b / 500, "round": 1 if b else None}

    return {"config": {"rule": "coverage", "seed": seed},
            "student": {"accuracy": fd_acc, "macro_f1": fd_acc - 0.01},
            "baselines": {"fedavg": {"accuracy": avg_acc, "macro_f1": avg_acc - 0.01}},
            "privacy": {"student": {"auc": 0.5}, "fedavg": {"auc": 0.6}},
            "bytes_to_target": {"fd": hit(fd_hit), "fedavg": hit(avg_hit)},
            "curves": {"fd": [{"total_bytes": 100, "seconds": 5.0, "accuracy": fd_acc}],
                       "fedavg": [{"total_bytes": 9000, "seconds": 9.0,
                                   "accuracy": avg_acc}]}}


def test_seeds_combine_into_paired_differences_and_count_misses():
    docs = [_doc(0, 0.90, 0.85, 100, 1000), _doc(1, 0.92, 0.90, 200, None),
            _doc(2, 0.94, 0.89, 100, 3000)]
    found = combine(docs)
    fd, avg = found["methods"]["fd"], found["methods"]["fedavg"]
    assert fd["accuracy"]["mean"] == pytest.approx(0.92)
    assert avg["target"] == {"seeds": 3, "reached": 2,
                             "bytes": interval([1000, 3000]),
                             "seconds": interval([1.0, 3.0]),
                             "cpu_seconds": interval([2.0, 6.0])}
    assert fd["target"]["reached"] == 3 and fd["membership_auc"]["mean"] == 0.5
    paired = found["paired"]["fedavg"]
    assert paired["accuracy_difference"]["values"] == pytest.approx([0.05, 0.02, 0.05])
    assert paired["seeds_both_reached"] == 2  # seed 1: FedAvg never reached the target
    assert paired["bytes_to_target_ratio"]["values"] == pytest.approx([10.0, 30.0])
    assert paired["seconds_to_target_difference"]["values"] == pytest.approx([-0.9, -2.9])


def test_fedprox_pulls_local_training_toward_the_global_weights(tmp_path):
    from fdcli.models import load_classifier
    from fdcli.stages.simulate import ARCHITECTURES, digits_dataset
    from fdcli.training import fit

    config = tmp_path / "resnet.json"
    config.write_text(json.dumps(ARCHITECTURES["resnet"]))
    digits = digits_dataset().select(range(64))
    names = [str(i) for i in range(10)]

    def moved(mu):
        clf = load_classifier(config, "image", names, seed=0)
        start = [p.detach().clone() for p in clf.model.parameters()]
        fit(clf, list(digits["image"]), list(digits["label"]), epochs=2, learning_rate=5e-2,
            batch_size=16, seed=0, progress=False, proximal_mu=mu)
        return sum(float((p.detach() - s).pow(2).sum())
                   for p, s in zip(clf.model.parameters(), start))

    free, held = moved(0.0), moved(100.0)
    assert held < 0.5 * free, (held, free)


def test_fedprox_sends_its_mu_to_every_client():
    from fdcli.fedavg import run_fedavg

    seen = []

    def train_fn(partition, state, config):
        seen.append(config.get("proximal-mu"))
        return state, 10, {}

    state = torch.nn.Linear(3, 2).state_dict()
    run = run_fedavg(state, train_fn, num_clients=2, num_rounds=2, proximal_mu=0.25,
                     evaluate_fn=lambda r, s: {"accuracy": 0.0})
    assert seen == [0.25] * 4
    assert [r["round"] for r in run.rounds] == [0, 1, 2]
    assert all(later["seconds"] >= earlier["seconds"] for earlier, later in
               zip(run.rounds, run.rounds[1:]))
    with pytest.raises(ValueError, match="FedProx runs with 32-bit arrays only"):
        run_fedavg(state, train_fn, num_clients=2, num_rounds=1, proximal_mu=0.1, bits=8)


def test_simulate_over_seeds_with_coordinator_validation(tmp_path):
    out = tmp_path / "sim"
    result = run("simulate", "--out", out, "--num-clients", 2, "--epochs", 1,
                 "--distill-epochs", 2, "--rounds", 3, "--round-epochs", 0.5,
                 "--round-distill-epochs", 1, "--coordinator-validation",
                 "--compare-rules", "", "--baselines", "", "--no-privacy", "--seeds", 2,
                 "--json")
    assert result.exit_code == 0, result.output
    combined = json.loads(result.stdout)
    assert combined == json.loads((out / "results.json").read_text())
    assert combined["seeds"] == [0, 1] and combined["config"]["seeds"] == [0, 1]
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [r["config"]["seed"] for r in runs] == [0, 1]
    for r in runs:
        history = r["rounds"]
        vals = [h["student_validation_accuracy"] for h in history]
        best = vals.index(max(vals))
        assert r["selected_round"] == history[best]["round"] == r["student"]["round"]
        assert r["student"]["accuracy"] == history[best]["student_accuracy"]
        assert all(vals[i] > max(vals[:i]) for i in range(1, len(vals) - 1))
        if len(history) < 3:  # stopped early: the last round did not improve
            assert vals[-1] <= max(vals[:-1])
        points = r["curves"]["fd"]
        assert [p["validation_accuracy"] for p in points] == vals
        assert all(b["seconds"] > a["seconds"] > 0 for a, b in zip(points, points[1:]))
    fd = combined["over_seeds"]["methods"]["fd"]
    assert fd["accuracy"]["values"] == [r["student"]["accuracy"] for r in runs]
    scores = {s["method"]: s for s in combined["scores"]}
    assert scores["fd"]["seeds"] == [0, 1]
    assert scores["fd"]["metrics"]["accuracy"] == fd["accuracy"]["values"]
    report = (out / "report.md").read_text()
    assert "over 2 seeds" in report and "## Paired differences" in report
    assert (out / "accuracy_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--coordinator-validation", "--validation-fraction", "0"],
     "validation_fraction must be > 0"),
    (["--fedavg-tune-lrs", "fast"], "--fedavg-tune-lrs must be numbers separated by commas"),
    (["--fedavg-tune-epochs", "0,1"], "the FedAvg tuning grid's values must be > 0"),
    (["--seeds", "0"], "seeds must be >= 1, got 0"),
])
def test_simulate_refuses_bad_evidence_settings(tmp_path, args, message):
    result = run("simulate", "--out", tmp_path / "sim", *args)
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert not (tmp_path / "sim").exists()
