"""Flower FedAvg in process (packing, rounds, bytes on the wire), bytes-to-target, the stage
meter, and fd simulate with its baselines on digits and on a text dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fdcli.fedavg import LocalGrid, bytes_per_round, client_app, pack, run_fedavg, unpack
from fdcli.meter import StageMeter
from fdcli.report import bytes_to_target, one_shot_curve, rounds_curve

from .test_pipeline import make_csv, run


def _wire_len(message) -> int:
    from flwr.common.serde import message_to_proto

    return len(message_to_proto(message).SerializeToString())


def _state(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5))
    return net.state_dict()


def test_pack_fp32_is_exact_and_8bit_within_half_a_step():
    state = _state()
    state["0.weight"] = state["0.weight"] * 3 + 0.5
    back = unpack(pack(state, 32))
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype
    record = pack(state, 8)
    assert record["0.weight"].numpy().dtype == np.uint8
    assert record["1.num_batches_tracked"].numpy().dtype == np.int64  # integers stay exact
    back = unpack(record)
    assert set(back) == set(state)
    w = state["0.weight"]
    step = float(w.max() - w.min()) / 255
    err = (back["0.weight"] - w).abs().max()
    assert 0 < err <= step / 2 + 1e-6
    assert float(back["0.weight"].min()) == pytest.approx(float(w.min()), abs=1e-6)
    assert torch.equal(back["1.running_var"], state["1.running_var"])  # constant: scale 0
    with pytest.raises(ValueError, match="bits must be 32 or 8"):
        pack(state, 4)


def test_fedavg_round_is_the_example_weighted_mean_of_client_updates():
    """One Flower round over three clients doing one real SGD step each on their own data:
    the new global weights are the example-weighted mean of the three updated models."""
    init = torch.nn.Linear(3, 1).state_dict()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, 3, generator=gen), torch.randn(n, 1, generator=gen))
            for n in (4, 10, 30)]

    def local_step(partition, state):
        net = torch.nn.Linear(3, 1)
        net.load_state_dict(state)
        x, y = data[partition]
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def train_fn(partition, state, config):
        assert config["server-round"] == 1
        return local_step(partition, state), len(data[partition][0]), {"loss": 0.0}

    result = run_fedavg(init, train_fn, num_clients=3, num_rounds=1,
                        evaluate_fn=lambda r, s: {"weight0": float(s["weight"][0, 0])})
    updates = [local_step(i, init) for i in range(3)]
    total = sum(len(d[0]) for d in data)
    for k in init:
        expected = sum(u[k] * len(d[0]) for u, d in zip(updates, data)) / total
        assert torch.allclose(result.state[k], expected, atol=1e-6)
        assert not torch.allclose(result.state[k], init[k])
    assert [r["round"] for r in result.rounds] == [0, 1]
    assert result.rounds[0]["weight0"] == pytest.approx(float(init["weight"][0, 0]))
    assert sorted(t["partition"] for t in result.traffic) == [0, 1, 2]


def test_quantised_fedavg_tracks_fp32_and_sends_a_quarter_of_the_bytes():
    init = {"w": torch.linspace(-1, 1, 4096).reshape(64, 64)}

    def train_fn(partition, state, config):
        return {"w": state["w"] * (1 + 0.1 * partition)}, 1, {}

    full = run_fedavg(init, train_fn, num_clients=2, num_rounds=2, bits=32)
    small = run_fedavg(init, train_fn, num_clients=2, num_rounds=2, bits=8)
    assert torch.allclose(small.state["w"], full.state["w"], atol=2 * 2.3 / 255)
    up32 = sum(t["up_bytes"] for t in full.traffic)
    up8 = sum(t["up_bytes"] for t in small.traffic)
    assert 4096 * 4 * 4 <= up32 < 4096 * 4 * 4 + 4 * 2000   # 4 uploads of 16 KiB + headers
    assert 3.5 < up32 / up8 < 4.0


def test_grid_counts_the_serialized_messages_both_ways():
    """Every message's recorded size is the length of its protobuf wire form: the one the
    server pushed (down) and the reply the server pulled (up)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from fdcli.fedavg import server_identity

    state = _state()

    def train_fn(partition, got, config):
        return {k: v * 2 for k, v in got.items()}, 5 + partition, {}

    grid = LocalGrid(client_app(train_fn), num_nodes=2)
    with server_identity(grid.run.run_id):
        sent = [Message(RecordDict({"arrays": pack(state),
                                    "config": ConfigRecord({"server-round": 3})}),
                        dst_node_id=node, message_type="train")
                for node in grid.get_node_ids()]
        ids = grid.push_messages(sent)
    replies = grid.pull_messages(ids)
    assert len(replies) == 2 and not grid.pull_messages(ids)  # pulled once
    assert [t["down_bytes"] for t in grid.traffic] == [_wire_len(m) for m in sent]
    assert [t["up_bytes"] for t in grid.traffic] == [_wire_len(r) for r in replies]
    assert [t["round"] for t in grid.traffic] == [3, 3]
    params = sum(v.numel() * v.element_size() for v in state.values())
    assert all(t["down_bytes"] > params for t in grid.traffic)
    for r in replies:
        assert isinstance(r.content["arrays"], ArrayRecord)
        assert torch.equal(unpack(r.content["arrays"])["0.weight"], state["0.weight"] * 2)
    per_round = bytes_per_round(grid.traffic)
    assert per_round == [{"round": 3, "clients": 2,
                          "down_bytes": sum(t["down_bytes"] for t in grid.traffic),
                          "up_bytes": sum(t["up_bytes"] for t in grid.traffic),
                          "max_down_bytes_per_client": max(t["down_bytes"]
                                                           for t in grid.traffic),
                          "max_up_bytes_per_client": max(t["up_bytes"] for t in grid.traffic)}]


def test_fedavg_samples_a_fraction_of_clients_per_round():
    seen = []

    def train_fn(partition, state, config):
        seen.append((config["server-round"], partition))
        return state, 1, {}

    result = run_fedavg({"w": torch.zeros(2)}, train_fn, num_clients=10, num_rounds=3,
                        fraction=0.2, seed=4)
    assert [sum(1 for r, _ in seen if r == k) for k in (1, 2, 3)] == [2, 2, 2]
    assert len(result.traffic) == 6
    with pytest.raises(ValueError, match="fraction"):
        run_fedavg({"w": torch.zeros(2)}, train_fn, num_clients=2, num_rounds=1, fraction=0)


def test_bytes_to_target_finds_the_first_round_that_reaches_it():
    rounds = [{"round": 0, "accuracy": 0.1, "macro_f1": 0.1, "seconds": 0.0},
              {"round": 1, "accuracy": 0.8, "macro_f1": 0.7, "seconds": 2.0},
              {"round": 2, "accuracy": 0.95, "macro_f1": 0.9, "seconds": 4.5,
               "cpu_seconds": 8.0},
              {"round": 3, "accuracy": 0.93, "macro_f1": 0.9, "seconds": 7.0}]
    traffic = [{"round": r, "clients": 2, "down_bytes": 100, "up_bytes": 40} for r in (1, 2, 3)]
    curve = rounds_curve(rounds, traffic)
    assert [p["uploaded_bytes"] for p in curve] == [0, 40, 80, 120]
    assert [p["total_bytes"] for p in curve] == [0, 140, 280, 420]
    assert bytes_to_target(curve, 0.9) == {"reached": True, "round": 2, "bytes": 280,
                                           "uploaded_bytes": 80, "seconds": 4.5,
                                           "cpu_seconds": 8.0, "accuracy": 0.95}
    miss = bytes_to_target(curve, 0.99)
    assert miss["reached"] is False and miss["bytes"] is None and miss["best_accuracy"] == 0.95
    assert miss["seconds"] is None and miss["cpu_seconds"] is None
    fd = one_shot_curve(500, 0, {"accuracy": 0.91, "macro_f1": 0.9})
    assert bytes_to_target(fd, 0.9)["bytes"] == 500
    assert not bytes_to_target(fd, 0.92)["reached"]


def test_stage_meter_sees_a_stage_s_allocation():
    meter = StageMeter(interval=0.01)
    with meter.stage("small"):
        pass
    with meter.stage("big"):
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    stages = meter.summary()
    assert set(stages) == {"small", "big", "total"}
    assert stages["big"]["peak_rss_mb"] >= stages["small"]["peak_rss_mb"] + 150
    # the total is the stages' sum by definition (not a second timing): equal up to rounding
    assert stages["total"]["wall_s"] == pytest.approx(
        stages["small"]["wall_s"] + stages["big"]["wall_s"], abs=0.011)


def _dir_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_simulate_with_baselines_on_digits(tmp_path):
    out = tmp_path / "sim"
    result = run("simulate", "--out", out, "--num-clients", 3, "--epochs", 3,
                 "--distill-epochs", 3, "--rounds", 1, "--rule", "confidence",
                 "--compare-rules", "", "--fedavg-rounds", 2,
                 "--fedavg-local-epochs", 1, "--fedavg-tune-lrs", "1e-3,2e-3",
                 "--baselines", "fedavg,fedprox,standalone,centralized", "--fedprox-mu", 0.5,
                 "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results == json.loads((out / "results.json").read_text())
    _check_tuning_and_fedprox(results, out)
    # the typed scores (fdcli.results) say what the sections say
    assert (results["schema"], results["schema_version"], results["task"]) == (
        "fd-simulate-results", 1, "classification")
    scores = {(s["method"], s["variant"].get("rule")): s for s in results["scores"]}
    assert set(scores) == {("fd", "confidence"), ("fedavg", None), ("fedavg_8bit", None),
                           ("fedprox", None), ("standalone", None),
                           ("standalone_student", None), ("centralized", None)}
    assert scores[("fd", "confidence")]["metrics"]["accuracy"] == [
        pytest.approx(results["student"]["accuracy"])]
    assert scores[("fd", "confidence")]["bytes"] == [results["bytes"]["fd"]["total"]]
    assert scores[("fedavg", None)]["summary"]["accuracy"]["mean"] == pytest.approx(
        results["baselines"]["fedavg"]["accuracy"])
    assert set(results["baselines"]) == {"fedavg", "fedavg_8bit", "fedprox", "standalone",
                                         "standalone_student", "centralized"}
    # the simulation learns: the student beats the mean specialist alone (0.72 against 0.34
    # when written), FedAvg does too, and centralized training on the union beats both
    alone = results["baselines"]["standalone"]["accuracy"]
    assert results["student"]["accuracy"] > alone + 0.1
    assert results["baselines"]["fedavg"]["accuracy"] > alone + 0.1
    assert results["baselines"]["centralized"]["accuracy"] > max(
        results["student"]["accuracy"], results["baselines"]["fedavg"]["accuracy"])
    specialists = results["specialists"]
    assert results["baselines"]["standalone"]["accuracy"] == pytest.approx(
        sum(s["accuracy"] for s in specialists) / 3)
    # FD bytes are the bundle files on disk
    fd = results["bytes"]["fd"]
    assert fd["uploaded_per_client"] == [_dir_bytes(out / "bundles" / f"client-{i}")
                                         for i in range(3)]
    assert results["curves"]["fd"][0]["uploaded_bytes"] == fd["uploaded_total"]
    # FedAvg bytes: every client each round, up and down; 8-bit sends about a quarter
    for name in ("fedavg", "fedavg_8bit", "fedprox"):
        per_round = results["bytes"][name]["per_round"]
        assert [r["round"] for r in per_round] == [1, 2]
        assert all(r["clients"] == 3 for r in per_round)
        curve = results["curves"][name]
        assert [p["round"] for p in curve] == [0, 1, 2]
        assert curve[-1]["uploaded_bytes"] == sum(r["up_bytes"] for r in per_round)
        assert curve[-1]["total_bytes"] == sum(r["up_bytes"] + r["down_bytes"]
                                               for r in per_round)
        assert results["baselines"][name]["accuracy"] == curve[-1]["accuracy"]
    weights = (out / "fedavg" / "model.safetensors").stat().st_size
    up32 = results["bytes"]["fedavg"]["per_round"][0]["up_bytes"]
    assert 3 * weights * 0.95 < up32 < 3 * weights * 1.1
    ratio = up32 / results["bytes"]["fedavg_8bit"]["per_round"][0]["up_bytes"]
    assert 3 < ratio < 4
    target = 0.95 * results["baselines"]["centralized"]["accuracy"]
    assert results["target_accuracy"] == pytest.approx(target)
    assert set(results["bytes_to_target"]) == {"fd", "fd_single_teacher", "fedavg",
                                               "fedavg_8bit", "fedprox"}
    for name, hit in results["bytes_to_target"].items():
        assert hit["reached"] == any(p["accuracy"] >= target for p in results["curves"][name])
    student = results["student"]["accuracy"]
    assert results["bytes_to_student_accuracy"]["fd"]["bytes"] == fd["uploaded_total"]
    for name in ("fedavg", "fedavg_8bit"):
        hit = results["bytes_to_student_accuracy"][name]
        first = next((p for p in results["curves"][name] if p["accuracy"] >= student), None)
        assert hit["bytes"] == (first["total_bytes"] if first else None)
    privacy = results["privacy"]
    for name in ("student", "fedavg", "fedavg_8bit", "fedprox", "centralized"):
        assert privacy[name]["members"] == sum(results["partition"]["sizes"]["clients"])
        assert 0 <= privacy[name]["auc"] <= 1
    assert len(privacy["specialists"]) == 3
    stages = results["timing"]
    assert {"partition", "specialists", "aggregate_confidence", "distill_confidence",
            "fedavg_tuning", "fedavg", "fedavg_8bit", "fedprox", "centralized", "privacy",
            "total"} <= set(stages)
    assert all(s["wall_s"] >= 0 and s["peak_rss_mb"] > 100 for s in stages.values())
    report = (out / "report.md").read_text()
    assert "| fedavg_8bit |" in report and "## Membership inference" in report
    assert (out / "accuracy_vs_bytes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_tuning_and_fedprox(r, out):
    """FedAvg tuned on validation over the grid; FedProx and 8-bit FedAvg at its choice."""
    tuning = r["fedavg_tuning"]
    assert tuning["grid"] == {"learning_rate": [1e-3, 2e-3], "local_epochs": [1.0]}
    assert [t["learning_rate"] for t in tuning["tried"]] == [1e-3, 2e-3]
    chosen = max(tuning["tried"], key=lambda t: t["validation_accuracy"])
    assert tuning["chosen"] == chosen and tuning["configurations"] == 2
    for name in ("fedavg", "fedavg_8bit", "fedprox"):
        assert r["baselines"][name]["learning_rate"] == chosen["learning_rate"]
    assert r["baselines"]["fedavg"]["accuracy"] == chosen["test_accuracy"]
    assert r["baselines"]["fedavg"]["validation_accuracy"] == chosen["validation_accuracy"]
    assert r["baselines"]["fedprox"]["proximal_mu"] == 0.5
    # the same arrays; each FedProx message down also carries "proximal-mu" in its config
    extra = r["bytes"]["fedprox"]["total"] - r["bytes"]["fedavg"]["total"]
    assert 0 < extra <= 6 * 40, extra
    meta = json.loads((out / "fedprox" / "fd.json").read_text())
    assert meta["stage"] == "fedprox" and meta["config"]["proximal_mu"] == 0.5
    for name in ("fd", "fedavg", "fedprox"):  # wall seconds on every curve: time to target
        points = r["curves"][name]
        assert all(b["seconds"] >= a["seconds"] >= 0 for a, b in zip(points, points[1:]))
        assert r["bytes_to_target"][name]["seconds"] == next(
            (p["seconds"] for p in points if p["accuracy"] >= r["target_accuracy"]), None)
    report = (out / "report.md").read_text()
    assert "FedAvg tuned on the validation split over 2 configurations" in report
    assert "| fedprox (Flower) |" in report and "time to target" in report


def test_simulate_on_a_text_dataset_without_fedavg(tmp_path):
    data = make_csv(tmp_path / "tickets.csv", 300, seed=5)
    out = tmp_path / "sim"
    result = run("simulate", "--data", data, "--out", out, "--num-clients", 2, "--epochs", 12,
                 "--distill-epochs", 12, "--rounds", 1, "--rule", "confidence",
                 "--compare-rules", "",
                 "--baselines", "centralized",
                 "--no-privacy", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results["config"]["kind"] == "text"
    assert [s["architecture"] for s in results["specialists"]] == ["bert", "distilbert"]
    assert set(results["baselines"]) == {"centralized"}
    assert set(results["bytes_to_target"]) == {"fd"}
    assert results["student"]["accuracy"] > 0.6  # keywords decide the label; chance is 1/3
    assert results["privacy"] == {} and "fedavg" not in results["bytes"]
    assert (out / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--baselines", "fedavg,fedsgd"], "unknown baseline(s) ['fedsgd']"),
    (["--fedavg-fraction", "0"], "fedavg_fraction must be in (0, 1], got 0.0"),
    (["--target-fraction", "1.5"], "target_fraction must be in (0, 1], got 1.5"),
    (["--fedavg-rounds", "0"], "fedavg_rounds must be >= 1"),
    (["--student", "gpt2"], "unknown image architecture(s) ['gpt2']"),
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--round-epochs", "0"], "round_epochs and round_distill_epochs > 0"),
    (["--schedule", "sometimes"], "schedule must be one of ['mixed', 'alternate']"),
    (["--digest-weight", "1.5"], "digest_weight in (0, 1]"),
])
def test_simulate_refuses_bad_settings(tmp_path, args, message):
    out = tmp_path / "sim"
    result = run("simulate", "--out", out, *args)
    assert result.exit_code == 1
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output and not out.exists()
