"""The federated-distillation side of ``fd simulate``: rounds of specialists, bundles, a
consensus and a student, with real artifacts on disk (see docs/rounds.md).

Round 1 is the one-shot protocol: every client trains a specialist on its private data and
emits a bundle on the proxy split; the coordinator aggregates the bundles into a consensus and
distills a student from it. In each later round the consensus goes back to every client, which
updates its specialist from it and from its private data (``train_specialist`` with
``teacher``) and emits a new bundle; the coordinator aggregates again and continues the
student's training on the new consensus. Round r's artifacts live in ``root`` for r = 1 and in
``root/rounds/round-r`` after it, each with ``specialists/``, ``bundles/``, ``teachers/RULE``
and ``students/RULE``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path``: what copying it to a USB stick costs."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def flagged_clients(teacher: Path) -> list[str]:
    """The clients the aggregate's outlier report flagged in ``teacher``'s provenance."""
    from ..bundle import read_manifest

    return [p["client_id"] for p in read_manifest(teacher).provenance if p.get("outlier")]


def scores(evaluated: dict[str, Any], **extra) -> dict[str, Any]:
    return {"accuracy": evaluated["accuracy"], "macro_f1": evaluated["macro_f1"], **extra}


def round_dir(root: Path, r: int) -> Path:
    return root if r == 1 else root / "rounds" / f"round-{r}"


@dataclass
class Federation:
    """What the rounds need: the partition, the model configs and the stage settings."""

    root: Path
    parts: Path
    configs: Path
    label_names: list[str]
    sizes: list[int]
    architectures: Sequence[str]
    student: str
    rule: str
    train: dict[str, Any]            # train_specialist settings of round 1
    distilling: dict[str, Any]       # distill settings of round 1
    round_epochs: float = 5.0
    round_distill_epochs: float = 30.0
    digest_weight: float = 0.2
    schedule: str = "mixed"
    from_student: bool = False
    declare_label_counts: bool = False
    proxy_slices: int = 1
    sharpen: float | None = None
    poisoned: dict[int, str] = field(default_factory=dict)  # client index -> poison kind
    seed: int = 0
    progress: bool = False
    log: Callable[[str], None] = print
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_clients(self) -> int:
        return len(self.sizes)

    def specialist_dirs(self, r: int) -> list[Path]:
        return [round_dir(self.root, r) / "specialists" / f"client-{i}"
                for i in range(self.num_clients)]

    def bundle_dirs(self, r: int) -> list[Path]:
        return [round_dir(self.root, r) / "bundles" / f"client-{i}"
                for i in range(self.num_clients)]

    def teacher_dir(self, r: int, rule: str | None = None) -> Path:
        return round_dir(self.root, r) / "teachers" / (rule or self.rule)

    def student_dir(self, r: int, rule: str | None = None) -> Path:
        return round_dir(self.root, r) / "students" / (rule or self.rule)

    @property
    def validation(self) -> Path | None:
        """The partition's labelled validation split, where it has one."""
        folder = self.parts / "validation"
        return folder if folder.is_dir() else None

    def slice_of(self, r: int) -> tuple[int, int] | None:
        """The proxy slice round ``r`` emits on: a fresh one each round, in turn."""
        return None if self.proxy_slices == 1 else ((r - 1) % self.proxy_slices + 1,
                                                    self.proxy_slices)

    def run_round(self, r: int, meter) -> dict[str, Any]:
        """Specialists, bundles, the consensus and the student of round ``r``; returns the
        round's record (scores, the bytes each direction carried, and its wall seconds:
        training, emission, aggregation and distillation, with their evaluations)."""
        from ..poison import poison_bundle
        from .emit import emit_logits
        from .evaluate import evaluate
        from .train_specialist import train_specialist

        started, cpu = time.perf_counter(), time.process_time()
        parts, test = self.parts, self.parts / "test"
        specialists, uploads = [], []
        downloaded = 0
        if r > 1:  # what each client receives: the consensus (and the student it starts from)
            consensus = self.teacher_dir(r - 1)
            each = dir_bytes(consensus) + (dir_bytes(self.student_dir(r - 1))
                                           if self.from_student else 0)
            downloaded = each * self.num_clients
        with meter.stage("specialists" if r == 1 else f"round_{r}_specialists"):
            for i, (model_dir, bundle) in enumerate(zip(self.specialist_dirs(r),
                                                        self.bundle_dirs(r))):
                arch = self.student if r > 1 and self.from_student else \
                    self.architectures[i % len(self.architectures)]
                if r == 1:
                    self.log(f"client {i}: training a {arch} on {self.sizes[i]} examples")
                    train_specialist(parts / f"client-{i}", self.configs / f"{arch}.json",
                                     model_dir, client_id=f"client-{i}",
                                     labels=self.label_names, **self.train)
                else:
                    start = self.student_dir(r - 1) if self.from_student else \
                        self.specialist_dirs(r - 1)[i]
                    if i == 0:
                        self.log(f"round {r}: each client digests the round-{r - 1} consensus "
                                 f"and revisits its data ({self.schedule}, "
                                 f"{self.round_epochs:g} epochs)")
                    train_specialist(parts / f"client-{i}", start, model_dir,
                                     client_id=f"client-{i}", labels=self.label_names,
                                     teacher=consensus,
                                     proxy=parts / "proxy", digest_weight=self.digest_weight,
                                     schedule=self.schedule,
                                     temperature=self.distilling["temperature"],
                                     **{**self.train, "epochs": self.round_epochs})
                emit_logits(model_dir, parts / "proxy", bundle, client_id=f"client-{i}",
                            declare_label_counts=self.declare_label_counts,
                            proxy_slice=self.slice_of(r), seed=self.seed,
                            progress=self.progress)
                if i in self.poisoned:  # a hostile client: it sends what it likes
                    poison_bundle(bundle, self.poisoned[i], seed=self.seed + 1000 * r + i)
                uploads.append(dir_bytes(bundle))
                specialists.append({"client_id": f"client-{i}", "architecture": arch,
                                    "train_examples": self.sizes[i],
                                    **scores(evaluate(model_dir, test)),
                                    "uploaded_bytes": uploads[-1]})
        student = self.aggregate_and_distill(r, self.rule, meter)
        record = {"round": r, "specialists": specialists, "student": student,
                  "teacher_proxy_accuracy": student["teacher_proxy_accuracy"],
                  "uploaded_bytes": sum(uploads), "downloaded_bytes": downloaded,
                  "uploaded_per_client": uploads,
                  "seconds": time.perf_counter() - started,
                  "cpu_seconds": time.process_time() - cpu}
        self.history.append(record)
        return record

    def aggregate_and_distill(self, r: int, rule: str, meter,
                              fresh: bool = False) -> dict[str, Any]:
        """Aggregate round ``r``'s bundles with ``rule`` and train its student: from scratch in
        round 1 (or when ``fresh``), else continued from round r-1's student."""
        from .aggregate import aggregate
        from .distill import distill
        from .evaluate import evaluate

        suffix = "" if r == 1 else f"_round_{r}"
        with meter.stage(f"aggregate_{rule}{suffix}"):
            self.log(f"aggregating {self.num_clients} bundles with rule {rule!r}"
                     + (f" (round {r})" if r > 1 else ""))
            aggregate(self.bundle_dirs(r), self.teacher_dir(r, rule), rule=rule,
                      sharpen=self.sharpen, seed=self.seed, progress=self.progress)
        with meter.stage(f"distill_{rule}{suffix}"):
            warm = r > 1 and not fresh
            source = self.student_dir(r - 1, rule) if warm else \
                self.configs / f"{self.student}.json"
            epochs = self.round_distill_epochs if warm else self.distilling["epochs"]
            self.log(f"distilling a {self.student} from the {rule!r} teacher"
                     + (f" (continuing round {r - 1}'s student, {epochs:g} epochs)"
                        if warm else ""))
            out = self.student_dir(r, rule)
            teacher = self.teacher_dir(r, rule)
            latest = [self.teacher_dir(q, rule)
                      for q in range(max(1, r - self.proxy_slices + 1), r + 1)
                      if self.teacher_dir(q, rule).is_dir()]
            if len(latest) > 1:  # slices: the newest consensus of each slice, side by side
                teacher = round_dir(self.root, r) / "teachers" / f"{rule}-all-slices"
                aggregate(latest, teacher, rule="mean", seed=self.seed, progress=False)
            distill(source, self.parts / "proxy", teacher, out,
                    **{**self.distilling, "epochs": epochs})
            evaluated = evaluate(out, self.parts / "test")
            extra = {}
            if self.validation is not None:
                extra["validation_accuracy"] = evaluate(out, self.validation)["accuracy"]
            return scores(evaluated, architecture=self.student, nll=evaluated["nll"],
                          ece=evaluated["ece"], teacher_proxy_accuracy=accuracy_on(
                              self.teacher_dir(r, rule), self.parts / "proxy-labels"),
                          **extra)

    def curve(self) -> list[dict[str, Any]]:
        """One point per round: the student's scores (and validation accuracy, where there is
        a validation split), the cumulative bytes, bundles up and consensus (and, with
        ``from_student``, the student's weights) down, and the cumulative wall and CPU seconds
        (this process's, all threads: a figure that other jobs on the machine do not
        inflate)."""
        up = total = 0
        seconds = cpu = 0.0
        points = []
        for h in self.history:
            up += h["uploaded_bytes"]
            total += h["uploaded_bytes"] + h["downloaded_bytes"]
            seconds += h["seconds"]
            cpu += h["cpu_seconds"]
            student = h["student"]
            points.append({"round": h["round"], "uploaded_bytes": up, "total_bytes": total,
                           "seconds": seconds, "cpu_seconds": cpu,
                           "accuracy": student["accuracy"],
                           "macro_f1": student["macro_f1"],
                           **({"validation_accuracy": student["validation_accuracy"]}
                              if "validation_accuracy" in student else {})})
        return points


def accuracy_on(bundle: Path, labelled: Path) -> float:
    """How often a bundle's most likely label is the true one, on the examples it covers: the
    teacher's accuracy on the proxy (which the simulation, unlike a coordinator, can label)."""
    import datasets

    from ..bundle import read_bundle

    labels = datasets.load_from_disk(str(labelled))["label"]
    hits = total = 0
    for block in read_bundle(bundle).iter_blocks():
        pred = block.dense().argmax(-1).tolist()
        hits += sum(int(p == labels[int(e)]) for p, e in zip(pred, block.example_ids))
        total += len(pred)
    return hits / total
