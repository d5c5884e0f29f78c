"""Causal-LM distillation through the five CLI commands, as a user runs them by hand.

The federation of ``fd simulate --task causal-lm`` (the standard library's packages as
institutions, its top-level modules as the proxy, a shared byte-level BPE tokenizer), but every
stage is an ``fd`` command invoked through the CLI's own entry point (``fdcli.cli.app``, in
this process so the imports are paid once):

    fd train-specialist client-i.jsonl --task causal-lm --model gpt2.json|llama.json ...
    fd emit-logits specialist-i proxy.jsonl --task causal-lm [bundle options]
    fd aggregate bundles... [aggregate options]
    fd distill gpt2.json proxy.jsonl teacher --task causal-lm [distill options]
    fd evaluate model test-<package>.jsonl --task causal-lm

Every stage uses its defaults except ``--epochs 3 --lr 1e-3`` (random-init models need a
larger rate than the 5e-5 meant for pretrained ones). Each variant is one student: a set of
emit, aggregate and distill options; ``default`` passes none. The references are the same
student architecture trained on the proxy text alone (``proxy_only``) and on the union of the
private text (``centralized``). Perplexity is per package on its held-out files.

    python benchmarks/lm_cli_defaults.py --out /tmp/lm-cli            # every variant
    python benchmarks/lm_cli_defaults.py --out /tmp/lm-cli --variants default,old_default

Finished stages are reused from ``--out`` (delete it to start over); results.json there is
rewritten after every student, and the whole table is printed as JSON at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typer.testing import CliRunner  # noqa: E402

from fdcli.cli import app  # noqa: E402
from fdcli.stages.federation import dir_bytes  # noqa: E402
from fdcli.stages.token_corpus import stdlib_domains, write_stdlib_corpus  # noqa: E402

TRAIN = ["--epochs", "3", "--lr", "1e-3"]
ARCHS = ("gpt2", "llama")
#: name -> (emit options, aggregate options, distill options). Two options measured in
#: benchmarks/results/lm_cli_defaults.json were removed from fd after they lost:
#: ``--tail-target next-token`` (the teacher's tail mass moved onto the text's next token) and
#: ``--kd-weighting mass`` (cross-entropy weighted per token by the teacher's tail mass).
VARIANTS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "default": ([], [], []),
    "old_default": (["--k", "16"], [], ["--temperature", "2", "--hard-weight", "0"]),
    "t1_hw0": (["--k", "16"], [], ["--temperature", "1", "--hard-weight", "0"]),
    "t2_hw0.25": (["--k", "16"], [], ["--temperature", "2", "--hard-weight", "0.25"]),
    "t2_hw0.5": (["--k", "16"], [], ["--temperature", "2", "--hard-weight", "0.5"]),
    "t2_hw0.75": (["--k", "16"], [], ["--temperature", "2", "--hard-weight", "0.75"]),
    "t1_hw0.25": (["--k", "16"], [], ["--temperature", "1", "--hard-weight", "0.25"]),
    "t1_hw0.5": (["--k", "16"], [], ["--temperature", "1", "--hard-weight", "0.5"]),
    "t1_hw0.75": (["--k", "16"], [], ["--temperature", "1", "--hard-weight", "0.75"]),
    "k64_t1_hw0.5": (["--k", "64"], ["--k", "64"],
                     ["--temperature", "1", "--hard-weight", "0.5"]),
    "k64_t1_hw0": (["--k", "64"], ["--k", "64"], ["--temperature", "1", "--hard-weight", "0"]),
    "k4_t1_hw0.5": (["--k", "4"], ["--k", "4"], ["--temperature", "1", "--hard-weight", "0.5"]),
    "t4_hw0.5": (["--k", "16"], [], ["--temperature", "4", "--hard-weight", "0.5"]),
    "t2_hw0.5_seed1": (["--k", "16"], [], ["--temperature", "2", "--hard-weight", "0.5",
                                           "--seed", "1"]),
    "t1_hw0.5_mean": (["--k", "16"], ["--rule", "mean"],
                      ["--temperature", "1", "--hard-weight", "0.5"]),
    "t2_hw0.5_mean": (["--k", "16"], ["--rule", "mean"],
                      ["--temperature", "2", "--hard-weight", "0.5"]),
    "sample8_mean_hw0.5": (["--encoding", "sample", "--draws", "8"], ["--rule", "mean"],
                           ["--temperature", "1", "--hard-weight", "0.5"]),
    "sample16_mean_hw0.5_seed1": (["--encoding", "sample", "--draws", "16"], ["--rule", "mean"],
                                  ["--temperature", "1", "--hard-weight", "0.5", "--seed", "1"]),
    "sample16_t2_hw0.5": (["--encoding", "sample", "--draws", "16"], [],
                          ["--temperature", "2", "--hard-weight", "0.5"]),
    "sample16_mean_t2_hw0.5": (["--encoding", "sample", "--draws", "16"], ["--rule", "mean"],
                               ["--temperature", "2", "--hard-weight", "0.5"]),
    "sample8_t2_hw0.5": (["--encoding", "sample", "--draws", "8"], [],
                         ["--temperature", "2", "--hard-weight", "0.5"]),
    "sample8_t2_hw0.5_seed1": (["--encoding", "sample", "--draws", "8"], [],
                               ["--temperature", "2", "--hard-weight", "0.5", "--seed", "1"]),
    "sample8_t1_hw0.5": (["--encoding", "sample", "--draws", "8"], [],
                         ["--temperature", "1", "--hard-weight", "0.5"]),
    "sample8_t1_hw0.5_seed1": (["--encoding", "sample", "--draws", "8"], [],
                               ["--temperature", "1", "--hard-weight", "0.5", "--seed", "1"]),
    "sample4_t1_hw0.5": (["--encoding", "sample", "--draws", "4"], [],
                         ["--temperature", "1", "--hard-weight", "0.5"]),
    "sample4_t2_hw0.5": (["--encoding", "sample", "--draws", "4"], [],
                         ["--temperature", "2", "--hard-weight", "0.5"]),
    "sample16_mean_hw0.5": (["--encoding", "sample", "--draws", "16"], ["--rule", "mean"],
                            ["--temperature", "1", "--hard-weight", "0.5"]),
}


#: the same students against one strong teacher: the centralized model (it saw every client's
#: text), to see whether a rule chosen on weak specialists throws away a good teacher's signal
ORACLE = {f"oracle_{name}": VARIANTS[base] for name, base in
          (("t2_hw0", "old_default"), ("t2_hw0.5", "t2_hw0.5"), ("t1_hw0.5", "t1_hw0.5"),
           ("sample8_t2_hw0.5", "sample8_t2_hw0.5"), ("sample8_t1_hw0.5", "sample8_t1_hw0.5"))}
VARIANTS.update(ORACLE)


class Fd:
    """Runs fd commands through the CLI entry point; a failure stops the benchmark with the
    command's own output."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args) -> dict:
        argv = [str(a) for a in args]
        result = self.runner.invoke(app, argv)
        if result.exit_code != 0:
            raise SystemExit(f"fd {' '.join(argv)} failed ({result.exit_code}):\n{result.output}")
        return json.loads(result.stdout) if "--json" in argv else {}


def _emit_tag(emit: list[str]) -> str:
    return "_".join(a.lstrip("-") for a in emit) or "default"


def markdown(results: dict) -> str:
    """The results as the table of docs/token-distillation.md: perplexity per domain, then
    bytes per token uploaded (each client's bundle, min-max) and the teacher's tail mass."""
    domains = results["config"]["domains"]
    head = ["model", *domains, "geo. mean", "bytes/token up", "teacher tail mass"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, r, extra=("", "")):
        cells = [f"{r['ppl_by_domain'][d]:,.0f}" for d in domains]
        lines.append("| " + " | ".join([name, *cells, f"{r['mean_ppl']:,.0f}", *extra]) + " |")

    for s in results["specialists"]:
        row(f"specialist {s['domain']} ({s['architecture']})", s)
    row("mean specialist", {"ppl_by_domain": results["mean_specialist_ppl_by_domain"],
                            "mean_ppl": math.exp(sum(math.log(s["mean_ppl"]) for s in
                                                     results["specialists"])
                                                 / len(results["specialists"]))})
    for name in ("proxy_only", "centralized"):
        row(name.replace("_", "-"), results[name])
    for name, s in results["students"].items():
        up = s["bundle_bytes_per_token"]
        opts = "; ".join(f"{stage} {' '.join(s[stage])}" for stage in
                         ("emit", "aggregate", "distill") if s[stage]) or "all defaults"
        row(f"student `{name}` ({opts})", s,
            (f"{min(up):.1f}-{max(up):.1f}", f"{s['teacher_mean_tail_mass']:.2f}"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--num-clients", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--client-chars", type=int, default=300_000)
    parser.add_argument("--proxy-chars", type=int, default=600_000)
    parser.add_argument("--test-chars", type=int, default=40_000)
    parser.add_argument("--lr", default="1e-3", help="learning rate of every stage")
    parser.add_argument("--epochs", default="3", help="epochs of every stage")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table of --out/results.json and stop")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((args.out / "results.json").read_text())))
        return
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")

    TRAIN[:] = ["--epochs", args.epochs, "--lr", args.lr]
    fd, root = Fd(), args.out
    root.mkdir(parents=True, exist_ok=True)
    domains = stdlib_domains(args.num_clients)
    corpus = write_stdlib_corpus(root, domains, client_chars=args.client_chars,
                                 proxy_chars=args.proxy_chars, test_chars=args.test_chars,
                                 vocab_size=args.vocab_size, max_length=args.max_length)
    tok, proxy = corpus.tokenizer, corpus.proxy
    results_path = root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["config"] = {**vars(args), "out": str(args.out), "train": TRAIN,
                         "domains": list(domains)}
    timing = results.setdefault("timing_s", {})

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    def score(model: Path) -> dict:
        ppl = {pkg: round(fd("evaluate", model, path, "--task", "causal-lm", "--tokenizer", tok,
                             "--json")["perplexity"], 2)
               for pkg, path in corpus.tests.items()}
        return {"ppl_by_domain": ppl, "mean_ppl": round(math.exp(
            sum(math.log(p) for p in ppl.values()) / len(ppl)), 2)}

    def trained(name: str, data: Path, arch: str) -> Path:
        out = root / "models" / name
        if not (out / "fd.json").exists():
            t = time.perf_counter()
            fd("train-specialist", data, "--task", "causal-lm", "--model", corpus.configs[arch],
               "--tokenizer", tok, "--client-id", name, *TRAIN, "--out", out, "--overwrite")
            timing[f"train_{name}"] = round(time.perf_counter() - t, 1)
        return out

    specialists = [trained(f"client-{i}", data, ARCHS[i % len(ARCHS)])
                   for i, data in enumerate(corpus.clients)]
    if "specialists" not in results:
        results["specialists"] = [{"domain": pkg, "architecture": ARCHS[i % len(ARCHS)],
                                   **score(s)}
                                  for i, (pkg, s) in enumerate(zip(domains, specialists))]
        save()
    union = root / "data" / "union.jsonl"
    union.write_text("".join(p.read_text() for p in corpus.clients))
    for name, data in (("proxy_only", proxy), ("centralized", union)):
        if name not in results:
            results[name] = score(trained(name, data, "gpt2"))
            save()

    teachers: dict[tuple[str, str], dict] = {}

    def teacher(emit: list[str], agg: list[str], sources: list[Path]) -> tuple[Path, dict]:
        tag = _emit_tag(emit) + ("" if sources == specialists else "_" + sources[0].name)
        key = (tag, _emit_tag(agg))
        out = root / "teachers" / "__".join(key)
        if key in teachers:
            return out, teachers[key]
        bundles = [root / "bundles" / tag / f"client-{i}" for i in range(len(sources))]
        for i, (spec, b) in enumerate(zip(sources, bundles)):
            # bundles made with explicit options are reused; the defaults' are made afresh,
            # since what the defaults are may have changed since they were written
            if not emit or not (b / "manifest.json").exists():
                t = time.perf_counter()
                fd("emit-logits", spec, proxy, "--task", "causal-lm", *emit, "--out", b,
                   "--overwrite")
                timing[f"emit_{tag}_{i}"] = round(time.perf_counter() - t, 1)
        info = fd("aggregate", *bundles, *agg, "--out", out, "--overwrite", "--json")
        rows = info["rows"]

        def tail(bundle: Path):
            return json.loads((bundle / "manifest.json").read_text()).get(
                "fidelity", {}).get("mean_tail_mass")

        teachers[key] = {
            "bundle_bytes_per_token": [round(dir_bytes(b) / rows, 2) for b in bundles],
            "teacher_bytes_per_token": round(info["bytes"] / rows, 2),
            "teacher_mean_tail_mass": tail(out),
            "client_mean_tail_mass": [tail(b) for b in bundles]}
        return out, teachers[key]

    students = results.setdefault("students", {})
    for name in names:
        emit, agg, dist = VARIANTS[name]
        sources = [root / "models" / "centralized"] if name in ORACLE else specialists
        t_dir, info = teacher(emit, agg, sources)
        out = root / "students" / name
        t = time.perf_counter()
        fd("distill", corpus.configs["gpt2"], proxy, t_dir, "--task", "causal-lm",
           "--tokenizer", tok, *TRAIN, *dist, "--out", out, "--overwrite")
        meta = json.loads((out / "fd.json").read_text())
        students[name] = {"emit": emit, "aggregate": agg, "distill": dist,
                          "resolved": {k: meta["config"].get(k) for k in
                                       ("temperature", "hard_weight")},
                          **info, **score(out),
                          "distill_s": round(time.perf_counter() - t, 1)}
        save()
        print(json.dumps({name: students[name]}), file=sys.stderr, flush=True)

    spec = results["specialists"]
    results["mean_specialist_ppl_by_domain"] = {
        pkg: round(sum(s["ppl_by_domain"][pkg] for s in spec) / len(spec), 2) for pkg in domains}
    save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
