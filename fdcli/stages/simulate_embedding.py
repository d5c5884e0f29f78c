"""fd simulate --task embedding: task-agnostic distillation through relational bundles, on the
same partition and specialists as the classification simulation.

The federation of :func:`~fdcli.stages.simulate.simulate` runs first (one round, no
baselines): it partitions the data, trains the specialists and distills the label-logit
student. Then each specialist emits a relational bundle on the proxy set (its similarities to
the anchors, no labels), the bundles are aggregated, and a student of the same architecture
as the label-logit student is distilled from relations only. Beside it: the same architecture
trained SimCLR-style on the proxy set alone, and at random initialisation. Every model's
embeddings of the test split are probed (linear probe and k-NN, fitted on the labelled proxy
split), and compared with each specialist's neighbour sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..outputs import fresh_dir
from ..results import Score, write_results


def simulate_embedding(out: str | Path, *, data: str | Path | None = None,
                       num_clients: int = 5, alpha: float = 1.0, proxy_fraction: float = 0.2,
                       architectures: Sequence[str] | None = None, student: str | None = None,
                       epochs: float = 60.0, distill_epochs: float = 100.0,
                       learning_rate: float = 2e-3, batch_size: int = 32,
                       anchors: int = 1024, k: int = 64, temperature: float = 0.1,
                       pooling: str = "mean", banks: Sequence[str] = ("epoch",),
                       rule: str = "confidence", simclr_epochs: int | None = None,
                       neighbours: int = 10, rounds: int = 1,
                       round_epochs: float | None = None,
                       round_distill_epochs: float | None = None, seed: int = 0,
                       overwrite: bool = False, progress: bool = True,
                       log=print) -> dict[str, Any]:
    """Run the comparison and write ``out/results.json`` and ``out/report.md``. ``anchors``
    is capped at the proxy set's size; ``banks`` lists the relational students' anchor banks
    (:mod:`fdcli.relational`; the first is the headline student); ``simclr_epochs`` defaults
    to ``distill_epochs``.

    ``rounds`` > 1 continues the relational federation (:func:`_later_rounds`): each
    institution digests the last relational consensus (``fd distill --task embedding`` from
    its own encoder, ``round_epochs``, default a fifth of ``distill_epochs``) and emits again;
    the headline student continues on the new consensus (``round_distill_epochs``, the same
    default). The headline student is then the last round's; round 1's is probed beside it
    (``relational_student_round1``)."""
    from ..meter import StageMeter
    from ..models import save_classifier
    from ..relational import BANKS
    from .aggregate import aggregate
    from .embedding import distill_embedding, emit_embedding_logits
    from .federation import dir_bytes
    from .simulate import simulate

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    round_epochs = distill_epochs / 5 if round_epochs is None else round_epochs
    round_distill_epochs = distill_epochs / 5 if round_distill_epochs is None \
        else round_distill_epochs
    if not (round_epochs > 0 and round_distill_epochs > 0):
        raise ValueError(f"round_epochs and round_distill_epochs must be > 0, got "
                         f"{round_epochs} and {round_distill_epochs}")
    wrong = [b for b in banks if b not in BANKS]
    if not banks or wrong:
        raise ValueError(f"banks must be some of {list(BANKS)}, got {list(banks)}")
    meter = StageMeter()
    with fresh_dir(out, overwrite) as root:
        fed_root = root / "federation"
        with meter.stage("federation"):
            log("the classification federation: partition, specialists, label-logit student")
            fed = simulate(fed_root, data=data, num_clients=num_clients, alpha=alpha,
                           proxy_fraction=proxy_fraction, architectures=architectures,
                           student=student, epochs=epochs, distill_epochs=distill_epochs,
                           learning_rate=learning_rate, batch_size=batch_size, rounds=1,
                           baselines=(), privacy=False, seed=seed, progress=progress,
                           log=log, validation_fraction=0)  # no choices are made here yet
        cfg = fed["config"]
        kind, student = cfg["kind"], cfg["student"]
        parts, configs = fed_root / "partition", fed_root / "configs"
        tokenizer = fed_root / "tokenizer" if kind == "text" else None
        specialists = [fed_root / "specialists" / f"client-{i}" for i in range(num_clients)]
        proxy_size = fed["partition"]["sizes"]["proxy"]
        used_anchors = min(anchors, proxy_size)
        relational = root / "relational"
        bundles = [relational / "bundles" / f"client-{i}" for i in range(num_clients)]
        with meter.stage("emit_relations"):
            log(f"relational bundles: {used_anchors} anchors, top-{k}, temperature "
                f"{temperature:g}")
            for spec, bundle in zip(specialists, bundles):
                emit_embedding_logits(spec, parts / "proxy", bundle, anchors=used_anchors,
                                      temperature=temperature, pooling=pooling, k=k,
                                      seed=seed, progress=progress)
        teacher = relational / "teacher"
        with meter.stage("aggregate_relations"):
            aggregate(bundles, teacher, rule=rule, k=k, progress=progress)
        students: dict[str, Path] = {}
        train = dict(epochs=distill_epochs, learning_rate=learning_rate, batch_size=batch_size,
                     seed=seed, tokenizer=tokenizer, progress=progress)
        for bank in banks:
            name = "relational_student" if bank == banks[0] else f"relational_student_{bank}"
            with meter.stage(name):
                log(f"{name}: a {student} distilled from relations only ({bank} bank)")
                students[name] = relational / f"student-{bank}"
                distill_embedding(configs / f"{student}.json", parts / "proxy", teacher,
                                  students[name], bank=bank, **train)
        emit = dict(anchors=used_anchors, temperature=temperature, pooling=pooling, k=k,
                    seed=seed, progress=progress)
        records = [{"round": 1, "student": "relational_student_round1",
                    "uploaded_bytes": sum(dir_bytes(b) for b in bundles),
                    "downloaded_bytes": 0}]
        if rounds > 1:
            with meter.stage("later_rounds"):
                later, records[1:] = _later_rounds(
                    root, rounds, specialists, teacher, students["relational_student"],
                    parts=parts, emit=emit, rule=rule, bank=banks[0],
                    train={**train, "epochs": round_epochs},
                    continued={**train, "epochs": round_distill_epochs}, log=log)
            students = {"relational_student": later[-1],
                        "relational_student_round1": students["relational_student"],
                        **{f"relational_student_round{r}": path
                           for r, path in enumerate(later[:-1], start=2)},
                        **{n: path for n, path in students.items()
                           if n != "relational_student"}}
        else:
            records[0]["student"] = "relational_student"
        with meter.stage("proxy_only_simclr"):
            log(f"proxy-only: a {student} trained SimCLR-style on the proxy set alone")
            students["proxy_only_simclr"] = _simclr_baseline(
                configs / f"{student}.json", parts / "proxy", root / "proxy-only-simclr",
                kind=kind, pooling=pooling, epochs=int(simclr_epochs or distill_epochs),
                learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                tokenizer=tokenizer)
        from ..embedding import load_encoder

        random_init = load_encoder(configs / f"{student}.json", kind, tokenizer=tokenizer,
                                   seed=seed)
        students["random_init"] = root / "random-init"
        save_classifier(random_init, students["random_init"],
                        {"fd_version": __version__, "stage": "random-init", "task": "embedding",
                         "pooling": pooling})
        with meter.stage("probes"):
            log("probes: linear and k-NN on the test split, fitted on the labelled proxy")
            models = {"label_logit_student": fed_root / "students" / cfg["rule"],
                      **students,
                      **{f"specialist client-{i}": s for i, s in enumerate(specialists)}}
            probes = _probe_all(models, parts, specialists, pooling=pooling,
                                neighbours=neighbours, tokenizer=tokenizer)
        relational_bytes = [dir_bytes(b) for b in bundles]
        label_bytes = fed["bytes"]["fd"]["uploaded_per_client"]
        head = probes["relational_student"]["linear_probe_accuracy"]
        label = probes["label_logit_student"]["linear_probe_accuracy"]
        results = {
            "fd_version": __version__,
            "config": {"data": cfg["data"], "kind": kind, "num_clients": num_clients,
                       "alpha": alpha, "proxy_fraction": proxy_fraction,
                       "architectures": cfg["architectures"], "student": student,
                       "epochs": epochs, "distill_epochs": distill_epochs,
                       "simclr_epochs": int(simclr_epochs or distill_epochs),
                       "learning_rate": learning_rate, "batch_size": batch_size,
                       "anchors": used_anchors, "anchors_asked": anchors, "k": k,
                       "temperature": temperature, "pooling": pooling, "banks": list(banks),
                       "rule": rule, "label_rule": cfg["rule"], "neighbours": neighbours,
                       "rounds": rounds, "round_epochs": round_epochs,
                       "round_distill_epochs": round_distill_epochs, "seed": seed},
            "partition": fed["partition"],
            "probes": probes,
            "relational_minus_label_logit": head - label,
            "goal_within_3_points": head >= label - 0.03,
            "label_logit_student_accuracy": fed["student"]["accuracy"],
            "bytes": {"relational_per_client": relational_bytes,
                      "relational_per_example": sum(relational_bytes)
                      / (num_clients * proxy_size),
                      "label_logit_per_client": label_bytes,
                      "label_logit_per_example": sum(label_bytes) / (num_clients * proxy_size)},
        }
        for rec in records:
            rec.update({key: probes[rec["student"]][key]
                        for key in ("linear_probe_accuracy", "knn_accuracy")})
        results["rounds"] = records
        results["timing"] = meter.summary()
        (root / "report.md").write_text(report_markdown(results))
        results = write_results(root, "embedding", results, [
            Score.one(name, seed, probe) for name, probe in probes.items()])
    return results


def _later_rounds(root: Path, rounds: int, specialists: Sequence[Path], teacher: Path,
                  student: Path, *, parts: Path, emit: dict[str, Any], rule: str, bank: str,
                  train: dict[str, Any], continued: dict[str, Any], log
                  ) -> tuple[list[Path], list[dict[str, Any]]]:
    """Rounds 2..``rounds`` of the relational federation, under ``root/rounds/round-r``:
    each institution digests the last consensus from its last encoder (``train``), emits a
    new relational bundle, the coordinator aggregates them, and the student continues from
    the last round's on the new consensus (``continued``). Returns each round's student and
    record (its bundle bytes up, the consensus's bytes down to every client).

    Only the digest: revisiting the labelled data after it (as classification's rounds do)
    left the student level or behind on every digits run measured, where the digest alone
    led in most (docs/embeddings.md, "Rounds")."""
    from .aggregate import aggregate
    from .embedding import distill_embedding, emit_embedding_logits
    from .federation import dir_bytes

    students, records = [], []
    for r in range(2, rounds + 1):
        here = root / "rounds" / f"round-{r}"
        log(f"round {r}: each institution digests the round-{r - 1} relational consensus")
        bundles, now = [], []
        for i, spec in enumerate(specialists):
            model = here / "specialists" / f"client-{i}"
            distill_embedding(spec, parts / "proxy", teacher, model, **train)
            bundles.append(here / "bundles" / f"client-{i}")
            emit_embedding_logits(model, parts / "proxy", bundles[-1],
                                  client_id=f"client-{i}", **emit)
            now.append(model)
        down = dir_bytes(teacher) * len(specialists)
        teacher, specialists = here / "teacher", now
        aggregate(bundles, teacher, rule=rule, k=emit["k"], progress=emit["progress"])
        students.append(here / "student")
        distill_embedding(student, parts / "proxy", teacher, students[-1], bank=bank,
                          **continued)
        student = students[-1]
        records.append({"round": r, "student": f"relational_student_round{r}",
                        "uploaded_bytes": sum(dir_bytes(b) for b in bundles),
                        "downloaded_bytes": down})
    records[-1]["student"] = "relational_student"
    return students, records


def _simclr_baseline(config: Path, proxy: Path, out: Path, *, kind: str, pooling: str,
                     epochs: int, learning_rate: float, batch_size: int, seed: int,
                     tokenizer: Path | None) -> Path:
    import datasets

    from ..embedding import load_encoder
    from ..models import save_classifier
    from ..selfsup import simclr

    enc = load_encoder(config, kind, tokenizer=tokenizer, seed=seed)
    values = list(datasets.load_from_disk(str(proxy))[kind])
    metrics = simclr(enc, values, pooling=pooling, epochs=epochs, learning_rate=learning_rate,
                     batch_size=batch_size, seed=seed)
    save_classifier(enc, out, {"fd_version": __version__, "stage": "simclr",
                               "task": "embedding", "pooling": pooling, "metrics": metrics})
    return out


def _probe_all(models: dict[str, Path], parts: Path, specialists: Sequence[Path], *,
               pooling: str, neighbours: int, tokenizer: Path | None) -> dict[str, Any]:
    """Each model's probe scores on the test split (fitted on the labelled proxy) and its
    mean neighbour agreement with the specialists on the test split."""
    from ..embedding import neighbour_agreement
    from .embedding import labelled_embeddings, probe_scores

    def embeddings(model: Path, *data: Path):
        return labelled_embeddings(model, data, pooling=pooling, tokenizer=tokenizer)[0]

    found = {name: embeddings(model, parts / "test", parts / "proxy-labels")
             for name, model in models.items()}
    tests = {model: found[name][0][0] for name, model in models.items()}
    for s in specialists:  # each model loaded once
        if s not in tests:
            tests[s] = embeddings(s, parts / "test")[0][0]
    out = {}
    for name, model in models.items():
        (z, y), (pz, py) = found[name]
        k = min(neighbours, len(y) - 1)
        agree = [neighbour_agreement(z, tests[s], k) for s in specialists if s != model]
        out[name] = {**probe_scores(pz, py, z, y),
                     "neighbour_agreement_with_specialists": sum(agree) / max(len(agree), 1),
                     "embedding_dim": int(z.shape[1])}
    return out


def report_markdown(results: dict[str, Any]) -> str:
    c, b = results["config"], results["bytes"]
    lines = [f"# fd simulate --task embedding ({c['data']}, {c['num_clients']} clients, "
             f"alpha {c['alpha']})", "",
             f"Relational bundles: {c['anchors']} anchors, top-{c['k']}, temperature "
             f"{c['temperature']}, {c['pooling']} pooling; students: {c['student']}.", "",
             "| model | linear probe | k-NN | neighbour agreement with specialists | dim |",
             "|---|---|---|---|---|"]
    for name, p in results["probes"].items():
        lines.append(f"| {name} | {p['linear_probe_accuracy']:.3f} | {p['knn_accuracy']:.3f} "
                     f"| {p['neighbour_agreement_with_specialists']:.3f} | "
                     f"{p['embedding_dim']} |")
    gap = results["relational_minus_label_logit"]
    lines += ["", f"Relational minus label-logit student (linear probe): {gap * 100:+.1f} "
              f"points; goal (within 3 points): "
              f"{'met' if results['goal_within_3_points'] else 'missed'}.", "",
              f"Bytes per proxy example and client: relational {b['relational_per_example']:.1f}"
              f", label logits {b['label_logit_per_example']:.1f}.", ""]
    if len(results["rounds"]) > 1:
        lines += ["Rounds (each institution digests the last consensus; the student continues "
                  "on the new one):", "",
                  "| round | linear probe | k-NN | bytes up | bytes down |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['linear_probe_accuracy']:.3f} | {r['knn_accuracy']:.3f} "
                  f"| {r['uploaded_bytes']:,} | {r['downloaded_bytes']:,} |"
                  for r in results["rounds"]] + [""]
    return "\n".join(lines)
