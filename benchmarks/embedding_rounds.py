"""Do rounds help a relational (embedding) federation? Measured on the specialists of a
finished ``fd simulate --task embedding`` run, as issue 27 asks before ``--rounds`` is offered
for embeddings. Prints JSON::

    fd simulate --task embedding --out sim-emb
    python benchmarks/embedding_rounds.py sim-emb

Round 2, as the other tasks run it: each institution digests the round-1 relational consensus
(``fd distill --task embedding`` starting from its specialist, ``--digest-epochs``), then
revisits its own labelled data (``fd train-specialist`` from the digested encoder, a fresh
head, ``--own-epochs``; 0 to skip: digest only), and emits its relational bundle again; the
coordinator aggregates; the round-1 relational student continues on the new consensus for
``--round-distill-epochs``.

The control, at the same cost to the student: the round-1 student continued for the same
epochs on the round-1 consensus. Every model is probed as the simulation probes (linear probe
and k-NN on the test split, fitted on the labelled proxy); the specialists before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path, help="a finished fd simulate --task embedding folder")
    parser.add_argument("--digest-epochs", type=float, default=20.0)
    parser.add_argument("--own-epochs", type=float, default=10.0)
    parser.add_argument("--round-distill-epochs", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    from fdcli.stages.aggregate import aggregate
    from fdcli.stages.embedding import distill_embedding, emit_embedding_logits
    from fdcli.stages.simulate_embedding import _probe_all
    from fdcli.stages.train_specialist import train_specialist

    results = json.loads((args.sim / "results.json").read_text())
    c = results["config"]
    fed = args.sim / "federation"
    parts, tokenizer = fed / "partition", (fed / "tokenizer" if c["kind"] == "text" else None)
    n = c["num_clients"]
    specialists = [fed / "specialists" / f"client-{i}" for i in range(n)]
    labels = json.loads((specialists[0] / "fd.json").read_text())["label_names"]
    student = args.sim / "relational" / f"student-{c['banks'][0]}"
    teacher = args.sim / "relational" / "teacher"
    work = args.work or args.sim / "rounds"
    shutil.rmtree(work, ignore_errors=True)
    train = dict(learning_rate=c["learning_rate"], batch_size=c["batch_size"], seed=c["seed"],
                 tokenizer=tokenizer, progress=False)
    emit = dict(anchors=c["anchors"], temperature=c["temperature"], pooling=c["pooling"],
                k=c["k"], seed=c["seed"], progress=False)
    t0 = time.perf_counter()
    round2 = []
    for i, spec in enumerate(specialists):
        digested = work / "digested" / f"client-{i}"
        distill_embedding(spec, parts / "proxy", teacher, digested,
                          epochs=args.digest_epochs, **train)
        if args.own_epochs > 0:
            revisited = work / "specialists" / f"client-{i}"
            train_specialist(parts / f"client-{i}", digested, revisited, client_id=f"client-{i}",
                             labels=labels, epochs=args.own_epochs,
                             **{**train, "tokenizer": tokenizer})
            round2.append(revisited)
        else:
            round2.append(digested)
    bundles = [work / "bundles" / f"client-{i}" for i in range(n)]
    for i, (spec, bundle) in enumerate(zip(round2, bundles)):
        emit_embedding_logits(spec, parts / "proxy", bundle, client_id=f"client-{i}", **emit)
    aggregate(bundles, work / "teacher", rule=c["rule"], k=c["k"], progress=False)
    specialists_s = time.perf_counter() - t0
    distill_embedding(student, parts / "proxy", work / "teacher", work / "student-round2",
                      epochs=args.round_distill_epochs, **train)
    distill_embedding(student, parts / "proxy", teacher, work / "student-control",
                      epochs=args.round_distill_epochs, **train)
    models = {"student_round1": student, "student_round2": work / "student-round2",
              "student_round1_continued": work / "student-control",
              **{f"specialist client-{i}": s for i, s in enumerate(specialists)},
              **{f"round-2 specialist client-{i}": s for i, s in enumerate(round2)}}
    probes = _probe_all(models, parts, specialists, pooling=c["pooling"],
                        neighbours=c["neighbours"], tokenizer=tokenizer)

    def mean(prefix: str, key: str) -> float:
        vals = [p[key] for name, p in probes.items() if name.startswith(prefix)]
        return sum(vals) / len(vals)

    acc = "linear_probe_accuracy"
    out = {"sim": str(args.sim), "config": c,
           "settings": {"digest_epochs": args.digest_epochs, "own_epochs": args.own_epochs,
                        "round_distill_epochs": args.round_distill_epochs},
           "probes": probes,
           "round2_minus_control": probes["student_round2"][acc]
           - probes["student_round1_continued"][acc],
           "specialists_mean_before": mean("specialist", acc),
           "specialists_mean_after": mean("round-2 specialist", acc),
           "label_logit_student": results["probes"]["label_logit_student"],
           "seconds": {"round2_specialists_and_consensus": round(specialists_s, 1),
                       "total": round(time.perf_counter() - t0, 1)}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
