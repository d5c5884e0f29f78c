"""The typed results of fd simulate: scores per method and variant, one value per seed, their
spread over seeds, and the versioned schema of results.json."""

from __future__ import annotations

import json

import pytest

from fdcli.errors import FdError
from fdcli.results import SCHEMA, Score, document, merge, read_scores, write_results


def test_a_score_keeps_the_numeric_metrics_of_one_run():
    s = Score.one("fd", 0, {"accuracy": 0.9, "macro_f1": 0.8, "architecture": "resnet",
                            "ppl_by_domain": {"a": 1.0}, "ok": True}, variant={"rule": "mean"},
                  sent=1234)
    assert (s.method, s.seeds, s.variant, s.bytes) == ("fd", [0], {"rule": "mean"}, [1234])
    assert s.metrics == {"accuracy": [0.9], "macro_f1": [0.8]}
    assert s.summary()["accuracy"] == {"mean": 0.9, "std": 0.0, "n": 1}


def test_seeds_merge_per_method_and_variant_with_their_spread():
    runs = [[Score.one("fd", seed, {"accuracy": acc}, variant={"rule": "coverage"}, sent=10),
             Score.one("fd", seed, {"accuracy": acc - 0.1}, variant={"rule": "mean"}),
             Score.one("fedavg", seed, {"accuracy": 0.5, "nll": 1.0}, sent=99)]
            for seed, acc in ((0, 0.90), (1, 0.94), (2, 0.92))]
    runs[2][2].metrics.pop("nll")  # a metric one run lacks is left out of the combination
    merged = {(s.method, s.variant.get("rule")): s for s in merge(runs)}
    cov = merged[("fd", "coverage")]
    assert cov.seeds == [0, 1, 2] and cov.bytes == [10, 10, 10]
    summary = cov.summary()["accuracy"]
    assert summary["mean"] == pytest.approx(0.92) and summary["n"] == 3
    assert summary["std"] == pytest.approx(0.02)  # sample standard deviation
    assert merged[("fd", "mean")].summary()["accuracy"]["mean"] == pytest.approx(0.82)
    assert set(merged[("fedavg", None)].metrics) == {"accuracy"}


def test_results_json_is_versioned_and_reads_back(tmp_path):
    scores = [Score.one("fd", 3, {"accuracy": 0.9}, sent=5),
              Score.one("centralized", 3, {"accuracy": 0.99})]
    doc = write_results(tmp_path, "classification", {"config": {"seed": 3}}, scores)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == doc
    assert (doc["schema"], doc["schema_version"], doc["task"], doc["seeds"]) == (
        SCHEMA, 1, "classification", [3])
    assert doc["config"] == {"seed": 3}  # the simulation's own sections stay beside them
    task, back = read_scores(tmp_path / "results.json")
    assert task == "classification"
    assert [(s.method, s.metrics, s.bytes) for s in back] == [
        ("fd", {"accuracy": [0.9]}, [5]), ("centralized", {"accuracy": [0.99]}, [None])]


@pytest.mark.parametrize("change,message", [
    ({"schema": "other"}, "not an fd simulate results.json (schema 'other', expected "
                          "'fd-simulate-results')"),
    ({"schema_version": 2}, "results schema version 2; this fd reads version 1"),
    ({"scores": [{"method": "fd", "seeds": [0, 1], "metrics": {"accuracy": [0.9]}}]},
     "scores[0] (fd): 'metrics' must hold one value per seed for every metric"),
])
def test_other_schemas_and_bad_scores_are_refused(tmp_path, change, message):
    doc = {**document("classification", {}, []), **change}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(FdError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        read_scores(tmp_path / "results.json")
