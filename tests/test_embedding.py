"""The embedding task: relational bundles, their aggregation, relational students (both anchor
banks), probes, the simulation, and the bad-input paths, on digits and tiny text encoders."""

from __future__ import annotations

import json

import pytest
import torch

from fdcli.bundle import read_bundle
from fdcli.embedding import (anchor_positions, load_encoder, neighbour_agreement, pick_anchors,
                             pool, relation_logits)
from fdcli.selfsup import augment_text, nt_xent
from fdcli.stages.simulate import ARCHITECTURES

from .helpers import fd as run
from .helpers import fd_ok as ok
from .test_pipeline import text_recipe


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Digits split between a ResNet and a ViT specialist (a few epochs each), and their
    relational bundles on the proxy split (64 anchors, top-8)."""
    from fdcli.stages.partition import partition
    from fdcli.stages.simulate import digits_dataset
    from fdcli.stages.train_specialist import train_specialist

    root = tmp_path_factory.mktemp("embedding")
    partition("digits", root / "parts", num_clients=2, dataset=digits_dataset(), seed=0)
    for name in ("resnet", "vit"):
        (root / f"{name}.json").write_text(json.dumps(ARCHITECTURES[name]))
    for i, name in enumerate(("resnet", "vit")):
        train_specialist(root / "parts" / f"client-{i}", root / f"{name}.json",
                         root / f"spec-{i}", epochs=4, learning_rate=2e-3, batch_size=32,
                         labels=[str(d) for d in range(10)], progress=False)
    for i in range(2):
        ok("emit-logits", root / f"spec-{i}", root / "parts" / "proxy", "--out",
           root / f"b-{i}", "--task", "embedding", "--anchors", 64, "--k", 8)
    return root


def test_relational_rows_are_the_models_anchor_similarities(world):
    """Every row is the top-8 of softmax(cos(centred embeddings) / 0.1) over the 64 anchors
    picked with seed 0, recomputed here from the specialist's backbone; an anchor never
    keeps itself."""
    import datasets

    reader = read_bundle(world / "b-0")
    m = reader.manifest
    proxy = datasets.load_from_disk(str(world / "parts" / "proxy"))
    anchors = pick_anchors(len(proxy), 64, 0)
    assert m.task == "embedding" and m.num_classes == 64
    assert m.label_space["names"] == [str(a) for a in anchors]
    assert m.rows == m.examples == len(proxy)
    cfg = m.producer.config
    assert cfg["temperature"] == 0.1 and cfg["pooling"] == "mean" and cfg["anchors"] == 64
    assert cfg["embedding_dim"] == 64 and m.encoding["k"] == 8

    enc = load_encoder(world / "spec-0", "image")
    enc.model.eval()
    pixels = enc.processor(images=[im.convert("RGB") for im in proxy["image"]],
                           return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        z = enc.model(pixel_values=pixels).last_hidden_state.mean((2, 3))
    center = z[anchors].mean(0)
    u = torch.nn.functional.normalize(z - center, dim=-1)
    logits = u @ u[anchors].T / 0.1
    for pos, a in enumerate(anchors):
        logits[a, pos] = -float("inf")
    want = torch.log_softmax(logits, -1)

    block = reader.read_all()
    sp = block.codec.sparse_at(block.tensors, 64, 1.0)
    order = block.example_ids.long()
    kept = sp.ids.long()
    # the kept ids are the 8 most similar anchors (ties aside), with their probabilities
    top = want[order].topk(8, -1).indices
    same = [(set(a.tolist()) == set(b.tolist())) for a, b in zip(kept, top)]
    assert sum(same) >= 0.95 * len(same)
    got = sp.logp.exp()
    ref = want[order].gather(1, kept).exp()
    # int8 values: close to the exact probabilities, closer still on average
    assert torch.allclose(got, ref, atol=0.05) and float((got - ref).abs().mean()) < 0.01
    for row, e in enumerate(order.tolist()):
        if e in anchors:
            assert anchors.index(e) not in kept[row].tolist()


def test_anchor_choice_is_deterministic_and_refused_when_it_differs(world):
    assert pick_anchors(100, 10, 3) == pick_anchors(100, 10, 3) != pick_anchors(100, 10, 4)
    assert pick_anchors(100, 10, 3) == sorted(pick_anchors(100, 10, 3))
    ok("emit-logits", world / "spec-1", world / "parts" / "proxy", "--out",
       world / "b-seed1", "--task", "embedding", "--anchors", 64, "--k", 8, "--seed", 1)
    result = run("aggregate", world / "b-0", world / "b-seed1", "--out", world / "bad-agg")
    assert result.exit_code == 1
    assert "label_space.fingerprint" in result.output and "anchors differ" in result.output
    assert not (world / "bad-agg").exists()


def test_aggregate_keeps_anchors_and_emission_settings(world):
    ok("aggregate", world / "b-0", world / "b-1", "--out", world / "teacher")
    m = read_bundle(world / "teacher").manifest
    first = read_bundle(world / "b-0").manifest
    assert m.task == "embedding" and m.label_space == first.label_space
    # by default as many anchors per row as the inputs kept
    assert m.rows == first.rows and m.encoding["name"] == "topk" and m.encoding["k"] == 8
    cfg = m.producer.config
    assert (cfg["temperature"], cfg["pooling"], cfg["anchors"]) == (0.1, "mean", 64)
    ok("aggregate", world / "b-0", world / "b-1", "--k", 16, "--out", world / "teacher16")
    wide = read_bundle(world / "teacher16").manifest
    assert wide.encoding["k"] == 16 and wide.fidelity["mean_tail_mass"] < m.fidelity[
        "mean_tail_mass"]  # the union of two top-8 rows keeps more of the consensus
    result = run("aggregate", world / "b-0", world / "b-1", "--sharpen", 0.5, "--out",
                 world / "sharp")
    assert result.exit_code == 1
    assert "fd aggregate: --sharpen does not apply to --task embedding" in result.output


def _test_embeddings(world, model):
    from fdcli.stages.embedding import labelled_embeddings

    (z, y), = labelled_embeddings(model, [world / "parts" / "test"])[0]
    return z, y


def test_relational_student_learns_the_teachers_neighbours(world):
    """A ViT student (another architecture and width than the ResNet teacher) distilled from
    the ResNet's relations only shares far more of its neighbour sets than at
    initialisation."""
    out = world / "student"
    result = ok("distill", world / "vit.json", world / "parts" / "proxy", world / "b-0",
                "--out", out, "--task", "embedding", "--epochs", 10, "--lr", 2e-3,
                "--batch-size", 32, "--json")
    summary = json.loads(result.stdout)
    assert summary["anchors"] == 64 and summary["proxy_examples"] == 359
    assert summary["bank_refreshes"] == 10  # one per epoch
    meta = json.loads((out / "fd.json").read_text())
    assert meta["task"] == "embedding" and meta["config"]["bank"] == "epoch"
    assert meta["pooling"] == "mean" and meta["config"]["emit_temperature"] == 0.1

    from fdcli.models import save_classifier

    save_classifier(load_encoder(world / "vit.json", "image"), world / "init", {})
    teacher_z, _ = _test_embeddings(world, world / "spec-0")
    student_z, _ = _test_embeddings(world, out)
    init_z, _ = _test_embeddings(world, world / "init")
    assert student_z.shape[1] == 48 and teacher_z.shape[1] == 64
    learned = neighbour_agreement(student_z, teacher_z, 10)
    before = neighbour_agreement(init_z, teacher_z, 10)
    assert learned > before + 0.05, (learned, before)


def test_momentum_bank_moves_its_encoder_and_refreshes_in_rotation(world):
    """The momentum bank's encoder moves (1 - m) of the way to the student after a step,
    re-embeds the next ``refresh`` anchors with it, and is not what gets saved."""
    import datasets

    from fdcli.relational import RelationalStudent

    enc = load_encoder(world / "vit.json", "image")
    values = list(datasets.load_from_disk(str(world / "parts" / "proxy"))["image"])[:20]
    student = RelationalStudent(enc, values, pooling="mean", temperature=0.1,
                                bank="momentum", momentum=0.75, refresh=8)
    student.refresh()
    before = student.anchors.clone()
    with torch.no_grad():
        for p in student.encoder.parameters():
            p.add_(0.5)
    ema0 = [e.clone() for e in student.ema.parameters()]
    student.after_step()
    for e0, e, p in zip(ema0, student.ema.parameters(), student.encoder.parameters()):
        assert torch.allclose(e, 0.75 * e0 + 0.25 * p, atol=1e-6)
    changed = (student.anchors != before).any(-1)
    assert changed[:8].all() and not changed[8:].any() and student.pointer == 8
    student.after_step()
    student.after_step()  # 24 > 20: wraps around
    assert student.pointer == 4
    assert not any(n.startswith("ema") for n, _ in student.encoder.named_parameters())
    with pytest.raises(ValueError, match="bank must be one of"):
        RelationalStudent(enc, values, pooling="mean", temperature=0.1, bank="queue")


def test_evaluate_embedding_probes_and_agreement(world):
    result = ok("evaluate", world / "spec-0", world / "parts" / "test", "--task", "embedding",
                "--probe-train", world / "parts" / "proxy-labels", "--teacher",
                world / "spec-0", "--json")
    r = json.loads(result.stdout)
    assert r["neighbour_agreement"] == 1.0 and r["neighbours"] == 10
    assert r["neighbour_agreement_chance"] == pytest.approx(10 / 358)
    assert r["examples"] == 359 and r["embedding_dim"] == 64 and r["pooling"] == "mean"
    assert r["linear_probe_accuracy"] > 0.8 and r["knn_accuracy"] > 0.7
    assert r["probe"].startswith("fitted on")
    cv = json.loads(ok("evaluate", world / "spec-0", world / "parts" / "test", "--task",
                       "embedding", "--json").stdout)
    assert cv["probe"] == "5-fold cross-validation" and 0.5 < cv["linear_probe_accuracy"] <= 1
    other = json.loads(ok("evaluate", world / "spec-1", world / "parts" / "test", "--task",
                          "embedding", "--teacher", world / "spec-0", "--neighbours", 5,
                          "--json").stdout)
    assert other["neighbours"] == 5 and 0 < other["neighbour_agreement"] < 1


@pytest.mark.parametrize("args,message", [
    (["--anchors", 5000], "--anchors must be between 2 and the proxy set's size (359)"),
    (["--pooling", "cls"], "a convolutional feature map has no class token"),
    (["--pooling", "max"], "pooling must be one of ['mean', 'cls', 'pooler']"),
    (["--encoding", "sample"], "encoding must be one of ['topk', 'dense']"),
    (["--temperature", 0], "temperature must be positive"),
    (["--draws", 4], "fd emit-logits: --draws does not apply to --task embedding"),
])
def test_emit_embedding_refuses_bad_settings(world, tmp_path, args, message):
    out = tmp_path / "bundle"
    result = run("emit-logits", world / "spec-0", world / "parts" / "proxy", "--out", out,
                 "--task", "embedding", *args)
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()


def test_embedding_options_and_bundles_are_refused_elsewhere(world, tmp_path):
    cases = [
        (["emit-logits", world / "spec-0", world / "parts" / "proxy", "--out", tmp_path / "a",
          "--anchors", 8], "fd emit-logits: --anchors does not apply to --task classification"),
        (["distill", world / "vit.json", world / "parts" / "proxy", world / "b-0", "--out",
          tmp_path / "b", "--bank", "momentum", "--task", "classification"],
         "--task classification contradicts"),
        (["distill", world / "vit.json", world / "parts" / "proxy", world / "b-0", "--out",
          tmp_path / "d", "--task", "embedding", "--hard-weight", 0.5],
         "fd distill: --hard-weight does not apply to --task embedding"),
        (["evaluate", world / "spec-0", world / "parts" / "test", "--probe-train",
          world / "parts" / "proxy-labels"],
         "fd evaluate: --probe-train does not apply to --task classification"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in " ".join(result.output.split()), result.output
    ok("emit-logits", world / "spec-0", world / "parts" / "proxy", "--out", tmp_path / "cls")
    result = run("distill", world / "vit.json", world / "parts" / "proxy", tmp_path / "cls",
                 "--out", tmp_path / "e", "--task", "embedding")
    assert result.exit_code == 1 and (f"--task embedding contradicts {tmp_path / 'cls'}/"
                                      "manifest.json, which says classification") in \
        " ".join(result.output.split())
    result = run("aggregate", world / "b-0", tmp_path / "cls", "--out", tmp_path / "mixed")
    assert result.exit_code == 1 and "task is 'classification'" in result.output
    assert not any((tmp_path / n).exists() for n in "abcde") and not (tmp_path / "mixed").exists()


def test_text_encoders_pool_by_mask_cls_and_pooler(tmp_path):
    """A tiny BERT (pooler) and DistilBERT (none) on text; mean pooling ignores padding."""
    text_recipe(tmp_path, 60, seed=3, layers=1)
    (tmp_path / "distil.json").write_text(json.dumps({
        "model_type": "distilbert", "vocab_size": 64, "dim": 32, "n_layers": 1, "n_heads": 2,
        "hidden_dim": 64, "max_position_embeddings": 32}))
    bert = load_encoder(tmp_path / "bert.json", "text", tokenizer=tmp_path / "tokenizer")
    distil = load_encoder(tmp_path / "distil.json", "text", tokenizer=tmp_path / "tokenizer")
    inputs = bert.processor(["invoice refund", "invoice refund the service today my"],
                            padding=True, return_tensors="pt")
    bert.model.eval()
    with torch.no_grad():
        outputs = bert.model(**inputs)
    mean = pool(outputs, dict(inputs), "mean")
    n = int(inputs["attention_mask"][0].sum())
    assert torch.allclose(mean[0], outputs.last_hidden_state[0, :n].mean(0), atol=1e-5)
    assert torch.equal(pool(outputs, dict(inputs), "cls"), outputs.last_hidden_state[:, 0])
    assert pool(outputs, dict(inputs), "pooler").shape == (2, 32)
    with torch.no_grad():
        d_out = distil.model(**{k: v for k, v in inputs.items() if k != "token_type_ids"})
    with pytest.raises(Exception, match="has no pooler output; use --pooling mean or cls"):
        pool(d_out, dict(inputs), "pooler")
    for pooling in ("cls", "pooler"):
        out = tmp_path / f"bundle-{pooling}"
        ok("emit-logits", tmp_path / "bert.json", tmp_path / "all.csv", "--out", out,
           "--task", "embedding", "--anchors", 16, "--k", 4, "--pooling", pooling,
           "--tokenizer", tmp_path / "tokenizer")
        assert read_bundle(out).manifest.producer.config["pooling"] == pooling


def test_relation_logits_neighbours_and_simclr_pieces():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    anchors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    logits = relation_logits(z, anchors, torch.zeros(2), 0.5, torch.tensor([0, -1, -1]))
    assert logits[0, 0] == -float("inf") and logits[0, 1] == pytest.approx(0.0)
    assert logits[1].tolist() == pytest.approx([0.0, 2.0])
    assert logits[2].tolist() == pytest.approx([2 ** -0.5 / 0.5] * 2)
    assert anchor_positions([5, 7, 9], [7, 9]).tolist() == [-1, 0, 1]
    a = torch.randn(30, 8)
    assert neighbour_agreement(a, a, 5) == 1.0
    assert neighbour_agreement(a, torch.randn(30, 8), 5) < 0.6
    aligned = nt_xent(a, a + 0.01 * torch.randn(30, 8), 0.2)
    shuffled = nt_xent(a, torch.randn(30, 8), 0.2)
    assert aligned < shuffled
    import random

    view = augment_text("one two three four five six seven eight nine ten", random.Random(0))
    assert 1 <= len(view.split()) <= 10 and set(view.split()) <= set(
        "one two three four five six seven eight nine ten".split())
    with pytest.raises(Exception, match="--anchors must be between 2"):
        pick_anchors(10, 11, 0)


def test_simulate_embedding_end_to_end(tmp_path):
    out = tmp_path / "sim"
    result = ok("simulate", "--task", "embedding", "--num-clients", 2, "--epochs", 3,
                "--distill-epochs", 3, "--anchors", 128, "--k", 8, "--banks",
                "epoch,momentum", "--out", out, "--json")
    r = json.loads(result.stdout)
    names = {"label_logit_student", "relational_student", "relational_student_momentum",
             "proxy_only_simclr", "random_init", "specialist client-0", "specialist client-1"}
    assert set(r["probes"]) == names
    assert r["task"] == "embedding" and {s["method"] for s in r["scores"]} == names
    assert {s["method"]: s["metrics"]["knn_accuracy"] for s in r["scores"]} == {
        n: [pytest.approx(p["knn_accuracy"])] for n, p in r["probes"].items()}
    for p in r["probes"].values():
        assert 0 < p["linear_probe_accuracy"] <= 1 and 0 < p["knn_accuracy"] <= 1
    assert r["config"]["anchors"] == 128 and r["config"]["k"] == 8
    relational = [sum(f.stat().st_size for f in (out / "relational" / "bundles" / c).iterdir())
                  for c in ("client-0", "client-1")]
    assert r["bytes"]["relational_per_client"] == relational
    assert r["bytes"]["relational_per_example"] == pytest.approx(sum(relational) / (2 * 359))
    assert r["relational_minus_label_logit"] == pytest.approx(
        r["probes"]["relational_student"]["linear_probe_accuracy"]
        - r["probes"]["label_logit_student"]["linear_probe_accuracy"])
    report = (out / "report.md").read_text()
    assert "| relational_student |" in report and "| proxy_only_simclr |" in report
    assert [rec["round"] for rec in r["rounds"]] == [1]
    assert r["rounds"][0]["student"] == "relational_student"
    result = run("simulate", "--task", "embedding", "--rounds", 2, "--digest-weight", 0.5,
                 "--out", tmp_path / "x")
    assert result.exit_code == 1
    assert "fd simulate: --digest-weight does not apply to --task embedding" in result.output


def test_simulate_embedding_rounds(tmp_path):
    """Round 2: every institution digests round 1's relational consensus from its own
    encoder and emits again; the student continues from round 1's on the new consensus."""
    from fdcli.bundle import read_bundle

    out = tmp_path / "sim"
    result = ok("simulate", "--task", "embedding", "--num-clients", 2, "--epochs", 2,
                "--distill-epochs", 2, "--anchors", 64, "--k", 8, "--rounds", 2,
                "--round-epochs", 1, "--round-distill-epochs", 1, "--out", out, "--json")
    r = json.loads(result.stdout)
    assert r["config"]["rounds"] == 2 and r["config"]["round_epochs"] == 1
    first, second = r["rounds"]
    assert first["student"] == "relational_student_round1"
    assert second["student"] == "relational_student"
    for rec in r["rounds"]:
        probe = r["probes"][rec["student"]]
        assert rec["linear_probe_accuracy"] == probe["linear_probe_accuracy"]
        assert rec["knn_accuracy"] == probe["knn_accuracy"]
    round2 = out / "rounds" / "round-2"
    consensus = out / "relational" / "teacher"
    assert first["uploaded_bytes"] == sum(r["bytes"]["relational_per_client"])
    assert second["downloaded_bytes"] == 2 * sum(f.stat().st_size for f in consensus.iterdir())
    assert second["uploaded_bytes"] == sum(
        f.stat().st_size for c in ("client-0", "client-1")
        for f in (round2 / "bundles" / c).iterdir())
    for i in range(2):
        digested = json.loads((round2 / "specialists" / f"client-{i}" / "fd.json").read_text())
        assert digested["config"]["student"] == str(
            out / "federation" / "specialists" / f"client-{i}")
        bundle = read_bundle(round2 / "bundles" / f"client-{i}")
        assert bundle.manifest.producer.client_id == f"client-{i}"
    student = json.loads((round2 / "student" / "fd.json").read_text())
    assert student["config"]["student"] == str(out / "relational" / "student-epoch")
    assert "| 2 | " in (out / "report.md").read_text().split("Rounds")[1]


def test_relational_bundles_at_other_temperatures_are_refused(world, tmp_path):
    ok("emit-logits", world / "spec-1", world / "parts" / "proxy", "--out", tmp_path / "hot",
       "--task", "embedding", "--anchors", 64, "--k", 8, "--temperature", 0.5)
    result = run("aggregate", world / "b-0", tmp_path / "hot", "--out", tmp_path / "agg")
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and "emitted at different temperatures: 0.1" in message
    assert "0.5" in message and "same --temperature" in message
    assert not (tmp_path / "agg").exists()


@pytest.mark.parametrize("field,value,message", [
    ("temperature", "[red]hot\x1b[2J", "producer.config.temperature must be the positive "
                                        "temperature the relations were emitted at"),
    ("temperature", -1, "found -1"),
    ("pooling", "[bold]max\x07", "pooling must be one of ['mean', 'cls', 'pooler']"),
])
def test_hostile_teacher_settings_are_refused_as_text(world, tmp_path, field, value, message):
    """A teacher bundle whose recorded emission settings are wrong or hostile: a message that
    shows them as literal, escaped text, exit 1, nothing written."""
    import shutil

    from .helpers import load_manifest, save_manifest

    bundle = tmp_path / "teacher"
    shutil.copytree(world / "b-0", bundle)
    m = load_manifest(bundle)
    m["producer"]["config"][field] = value
    save_manifest(bundle, m)
    out = tmp_path / "student"
    result = run("distill", world / "vit.json", world / "parts" / "proxy", bundle, "--out", out,
                 "--task", "embedding", "--epochs", 1)
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and message in text, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    if isinstance(value, str):
        assert value.split("\x1b")[0].split("\x07")[0] in text  # markup shown, not applied
    assert not out.exists()


@pytest.mark.parametrize("last,message", [
    ("a", "label_space.names must list its anchors' example ids as decimal strings"),
    ("99999", "anchor example id 99999 is past the end of the 359-example proxy set"),
])
def test_teacher_anchors_that_are_not_proxy_examples_are_refused(world, tmp_path, last,
                                                                 message):
    """A well-formed relational bundle (as a careless or hostile coordinator could write
    one) whose anchors are not example ids, or lie past the proxy set."""
    from fdcli.bundle import BundleWriter, DenseCodec

    first = read_bundle(world / "b-0").manifest
    names = first.label_space["names"][:-1] + [last]
    bundle = tmp_path / "teacher"
    with BundleWriter(bundle, codec=DenseCodec(), task="embedding", num_classes=64,
                      label_names=names, proxy_fingerprint=first.proxy_fingerprint,
                      client_id="coordinator", model_fingerprint="sha256:" + "ab" * 32,
                      config={"temperature": 0.1, "pooling": "mean"}) as writer:
        writer.add(range(359), torch.randn(359, 64))
    out = tmp_path / "student"
    result = run("distill", world / "vit.json", world / "parts" / "proxy", bundle, "--out", out,
                 "--task", "embedding", "--epochs", 1)
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()
