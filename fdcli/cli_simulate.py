"""``fd simulate``: a whole federation on this machine, and its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import cli_options as opts
from .cli import app
from .cli_options import JsonOpt, Overwrite, SeedOpt, TaskOpt
from . import console
from .console import human, out, plain, print_json, reporting_errors


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "fd-simulation"),
    task: TaskOpt = "classification",
    data: Annotated[Optional[Path], typer.Option(help="A labelled image or text dataset (default: "
                                                      "scikit-learn's digits).")] = None,
    num_clients: Annotated[Optional[int], typer.Option(
        help="Number of institutions (default: 5, or 4 for causal-lm and seq2seq).")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of the label split.")]
    = 1.0,
    proxy_fraction: Annotated[float, typer.Option(help="Share of the data that becomes the "
                                                       "shared proxy set.")] = 0.2,
    rule: Annotated[Optional[str], typer.Option(
        help="Aggregation rule (default: coverage, whose bundles declare their label counts; "
             "confidence for causal-lm).")] = None,
    compare_rules: Annotated[Optional[str], typer.Option(
        help="Other rules to distill a student with from the last round's bundles, "
             "comma-separated, '' for none (default: none; mean for causal-lm; seq2seq: "
             "none).")] = None,
    architectures: Annotated[Optional[str], typer.Option(
        help="Specialist architectures, assigned in turn (default: vit,resnet; gpt2,llama "
             "for causal-lm; t5-mini,t5-tiny for seq2seq).")] = None,
    student: Annotated[Optional[str], typer.Option(
        help="Student architecture (default: resnet; gpt2 for causal-lm; t5-tiny for "
             "seq2seq).")] = None,
    epochs: Annotated[Optional[float], typer.Option(
        help="Specialist epochs (default: 60; 2 for causal-lm; 20 for seq2seq).")] = None,
    distill_epochs: Annotated[Optional[float], typer.Option(
        help="Distillation epochs (default: 100; 2 for causal-lm; 20 for seq2seq).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: 2e-3).")]
    = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size (default: 32; 16 for causal-lm and seq2seq).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        help="Distillation temperature (default: 2; causal-lm: as fd distill picks); "
             "embedding: the temperature of the anchor similarities (default: 0.1).")] = None,
    max_length: Annotated[int, typer.Option(help="causal-lm: tokens per block.")] = 64,
    hard_weight: Annotated[Optional[float], typer.Option(
        help="causal-lm and seq2seq: share of cross-entropy on the proxy's tokens in the "
             "student's loss (default 0.5).")] = None,
    k: Annotated[Optional[int], typer.Option(
        help="causal-lm and seq2seq: ids kept per token in the bundles (default: 16); "
             "embedding: anchors kept per example (default: 64).")] = None,
    anchors: Annotated[int, typer.Option(
        help="embedding: anchor examples of the relational bundles (capped at the proxy "
             "set's size).")] = 1024,
    banks: Annotated[str, typer.Option(
        help="embedding: the relational students' anchor banks, comma-separated (epoch, "
             "momentum); the first is the headline student.")] = "epoch",
    proxy_pairs: Annotated[int, typer.Option(
        help="seq2seq: function/docstring pairs in the proxy set.")] = 1000,
    client_chars: Annotated[int, typer.Option(
        help="causal-lm: characters of source per institution.")] = 300_000,
    proxy_chars: Annotated[int, typer.Option(
        help="causal-lm: characters of source in the proxy set.")] = 600_000,
    rounds: Annotated[Optional[int], typer.Option(
        help="Rounds of federated distillation: after the first, the consensus goes back to "
             "the clients, which update their specialists from it and their data (default: "
             "2; 1 is one-shot).")] = None,
    round_epochs: Annotated[Optional[float], typer.Option(
        help="Specialist epochs in each round after the first (default: 5).")] = None,
    round_distill_epochs: Annotated[Optional[float], typer.Option(
        help="Epochs the student continues on each later round's consensus (default: 30)."
    )] = None,
    digest_weight: Annotated[Optional[float], typer.Option(
        help="Later rounds: weight of KD toward the consensus in the specialists' loss "
             "(default: 0.2).")] = None,
    schedule: Annotated[Optional[str], typer.Option(
        help="Later rounds: mixed or alternate (see fd train-specialist).")] = None,
    from_student: Annotated[bool, typer.Option(
        "--from-student", help="Later rounds: start each specialist from the current student "
        "(a public model; its weights count as downloaded bytes).")] = False,
    proxy_slices: Annotated[Optional[int], typer.Option(
        help="Emit on a fresh slice of the proxy set each round, in turn, out of this many "
             "(default: 1, the whole proxy set every round).")] = None,
    sharpen: Annotated[Optional[float], typer.Option(
        help="Sharpen every consensus to softmax(p / T) at this temperature (see fd "
             "aggregate; default 0.1, 0 for none).")] = None,
    poison: Annotated[Optional[float], typer.Option(
        help="Share of the clients that are hostile (e.g. 0.2): their bundles are replaced "
             "by --poison-kind predictions every round.")] = None,
    poison_kind: Annotated[Optional[str], typer.Option(
        help="random (confident noise), flip (every class moved to the next) or "
             "overconfident (certainty on a wrong class). Default: flip.")] = None,
    baselines: Annotated[str, typer.Option(
        help="Baselines to run, comma-separated: fedavg (Flower FedAvg, fp32 and 8-bit), "
             "standalone (each specialist alone; a student from one teacher), centralized "
             "('' for none).")] = "fedavg,standalone,centralized",
    fedavg_rounds: Annotated[Optional[int], typer.Option(
        help="FedAvg rounds (default: 20; 8 for causal-lm; 10 for seq2seq; 0 for none with "
             "causal-lm and seq2seq).")] = None,
    fedavg_local_epochs: Annotated[Optional[float], typer.Option(
        help="FedAvg local epochs per round (default: 3; 0.5 for causal-lm; 2 for seq2seq).")]
    = None,
    fedavg_fraction: Annotated[float, typer.Option(
        help="Share of the clients FedAvg samples each round.")] = 1.0,
    target_fraction: Annotated[float, typer.Option(
        help="bytes_to_target's target, as a share of the centralized accuracy.")] = 0.95,
    privacy: Annotated[bool, typer.Option(
        help="Run the membership-inference attacks.")] = True,
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Run a whole federation on this machine and compare the student with each specialist
    and with the baselines: Flower FedAvg (fp32 and 8-bit), standalone training and
    centralized training. Writes OUT/results.json, OUT/report.md, OUT/accuracy_vs_bytes.png
    and every artifact on the way.

    With no arguments it uses scikit-learn's digits and tiny random-init ViTs and ResNets;
    a text dataset (--data) gets tiny BERTs and DistilBERTs and a word tokenizer trained on
    the proxy texts.
    With [bold]--task causal-lm[/bold], institutions hold the source of different Python
    standard-library packages and train small GPT-2 and Llama models; with [bold]--task
    seq2seq[/bold], small T5s learn to write a function's docstring from its source. Both
    also run Flower FedAvg of the student and membership-inference attacks on every model.
    With [bold]--task embedding[/bold], the specialists' relational bundles (similarities to
    anchor examples) teach an encoder without labels, probed against the label-logit
    student, a SimCLR encoder of the proxy set and a random-init one.
    None needs a download.

    [bold]Example[/bold]: fd simulate --alpha 0.1 --out sim-alpha0.1

    [bold]Example[/bold]: fd simulate --task embedding --data snippets.csv --out sim-emb
    """
    from .stages.simulate import simulate as run
    from .stages.simulate_lm import simulate_lm
    from .stages.simulate_embedding import simulate_embedding
    from .stages.simulate_seq2seq import simulate_seq2seq

    def log(message: str) -> None:
        console.log("fd simulate", message)

    given = {key: value for key, value in dict(
        num_clients=num_clients, epochs=epochs, distill_epochs=distill_epochs,
        learning_rate=lr, batch_size=batch_size, temperature=temperature,
        hard_weight=hard_weight, rounds=rounds, round_epochs=round_epochs,
        round_distill_epochs=round_distill_epochs, digest_weight=digest_weight,
        schedule=schedule, proxy_slices=proxy_slices, sharpen=sharpen, poison=poison,
        poison_kind=poison_kind, fedavg_rounds=fedavg_rounds,
        fedavg_local_epochs=fedavg_local_epochs).items()
        if value is not None}
    if given.get("sharpen") == 0:
        given["sharpen"] = None
    if from_student:
        given["from_student"] = True
    if architectures is not None:
        given["architectures"] = [a for a in architectures.split(",") if a]
    if student is not None:
        given["student"] = student
    if rule is not None:
        given["rule"] = rule
    if compare_rules is not None:
        given["compare_rules"] = [r for r in compare_rules.split(",") if r]
    with reporting_errors():
        opts.check_task(task)
        if task != "classification":
            rounds_given = sorted({"rounds", "round_epochs", "round_distill_epochs",
                                   "digest_weight", "schedule", "from_student",
                                   "proxy_slices", "sharpen", "poison", "poison_kind"}
                                  & set(given))
            if task in ("seq2seq", "embedding") and "compare_rules" in given:
                rounds_given.append("compare_rules")
            if rounds_given:
                raise ValueError(f"{', '.join('--' + o.replace('_', '-') for o in rounds_given)}"
                                 f" apply to classification; --task {task} is one-shot "
                                 "and unpoisoned")
        if task == "embedding":
            if "hard_weight" in given:
                raise ValueError("--hard-weight does not apply to --task embedding")
            for key in ("fedavg_rounds", "fedavg_local_epochs"):
                if key in given:
                    raise ValueError(f"--{key.replace('_', '-')} does not apply to --task "
                                     "embedding (it runs no FedAvg)")
            given.setdefault("rule", "confidence")
            results = simulate_embedding(out_dir, data=data, alpha=alpha,
                                         proxy_fraction=proxy_fraction, anchors=anchors,
                                         k=64 if k is None else k,
                                         banks=[b for b in banks.split(",") if b], seed=seed,
                                         overwrite=overwrite, progress=False, log=log,
                                         **given)
        elif task == "seq2seq":
            kept = 16 if k is None else k
            results = simulate_seq2seq(out_dir, k=kept, proxy_pairs=proxy_pairs, privacy=privacy,
                                       seed=seed, overwrite=overwrite, progress=False, log=log,
                                       **given)
        elif task == "causal-lm":
            results = simulate_lm(out_dir, max_length=max_length, k=16 if k is None else k,
                                  client_chars=client_chars,
                                  proxy_chars=proxy_chars, test_chars=min(40_000, client_chars),
                                  privacy=privacy, seed=seed, overwrite=overwrite,
                                  progress=False, log=log, **given)
        else:
            if "hard_weight" in given:
                raise ValueError("--hard-weight applies to --task causal-lm here")
            given.setdefault("fedavg_rounds", 20)
            given.setdefault("fedavg_local_epochs", 3.0)
            results = run(out_dir, data=data, alpha=alpha, proxy_fraction=proxy_fraction,
                          baselines=[b for b in baselines.split(",") if b],
                          fedavg_fraction=fedavg_fraction, target_fraction=target_fraction,
                          privacy=privacy, seed=seed, overwrite=overwrite, progress=False,
                          log=log, **given)
    if json_out:
        print_json(results)
        return
    if task == "causal-lm":
        _lm_table(results, out_dir)
        return
    if task == "seq2seq":
        _seq2seq_table(results, out_dir)
        return
    if task == "embedding":
        _embedding_table(results, out_dir)
        return
    n_rounds = len(results["rounds"])
    table = Table(title=plain(f"fd simulate: {len(results['specialists'])} clients, "
                              f"alpha={alpha}, {n_rounds} round(s) ({out_dir}/results.json)"),
                  title_justify="left")
    for col in ("model", "architecture", "accuracy", "macro-F1", "sent (up + down)"):
        table.add_column(col)
    for s in results["specialists"]:
        table.add_row(f"specialist {s['client_id']}", s["architecture"], f"{s['accuracy']:.3f}",
                      f"{s['macro_f1']:.3f}", human(s["uploaded_bytes"]) + " (last round up)")
    for name, s in results["students_by_rule"].items():
        sent = results["bytes"]["fd"]["total"] if name == results["config"]["rule"] else None
        table.add_row(f"student ({name})", s["architecture"], f"{s['accuracy']:.3f}",
                      f"{s['macro_f1']:.3f}", human(sent) if sent else "")
    for name, b in results["baselines"].items():
        sent = results["bytes"].get(name, {}).get("total")
        arch = "each alone (mean)" if name == "standalone" else results["student"]["architecture"]
        table.add_row(name, arch, f"{b['accuracy']:.3f}", f"{b['macro_f1']:.3f}",
                      human(sent) if sent else "")
    out.print(table)
    if results["poisoned_clients"]:
        out.print(plain(f"poisoned ({results['config']['poison_kind']}): "
                        f"{', '.join(results['poisoned_clients'])}; flagged as outliers by "
                        f"the aggregate: {', '.join(results['outliers_flagged']) or 'none'}"))
    hits = results["bytes_to_target"]
    if hits:
        reached = {k: human(v["bytes"]) if v["reached"] else "not reached"
                   for k, v in hits.items()}
        out.print(f"bytes to {results['target_accuracy']:.3f} accuracy: " +
                  ", ".join(f"{k} {v}" for k, v in reached.items()), highlight=False)
    out.print(plain(f"report: {out_dir}/report.md"))


def _lm_table(results: dict, out_dir: Path) -> None:
    domains = list(results["domains"])
    table = Table(title=plain(f"fd simulate --task causal-lm: perplexity by domain "
                              f"({out_dir}/results.json)"), title_justify="left")
    for col in ("model", "architecture", *domains, "mean", "uploaded"):
        table.add_column(col)

    def row(name: str, s: dict, uploaded: str = "") -> None:
        table.add_row(name, s["architecture"], *[f"{s['ppl_by_domain'][d]:.1f}" for d in domains],
                      f"{s['mean_ppl']:.1f}", uploaded)

    for s in results["specialists"]:
        row(f"specialist {s['client_id']} ({s['domain']})", s, human(s["uploaded_bytes"]))
    for name, s in results["students_by_rule"].items():
        row(f"student ({name})", s)
    row("proxy only (no teachers)", results["proxy_only"])
    row("centralized", results["centralized"])
    for name, s in results.get("baselines", {}).items():
        row(f"{name} (sent {human(s['total_bytes'])})", s)
    out.print(table)
    _baselines_lines(results)


def _seq2seq_table(results: dict, out_dir: Path) -> None:
    table = Table(title=plain(f"fd simulate --task seq2seq: docstrings on the union of the "
                              f"domains ({out_dir}/results.json)"), title_justify="left")
    for col in ("model", "architecture", "BLEU", "chrF", "ROUGE-L", "perplexity", "sent"):
        table.add_column(col)

    def row(name: str, s: dict, sent: str = "") -> None:
        u = s["union"]
        table.add_row(name, s.get("architecture", ""), f"{u['bleu']:.2f}", f"{u['chrf']:.2f}",
                      f"{u['rouge_l']:.2f}", f"{u['perplexity']:.1f}", sent)

    for s in results["specialists"]:
        row(f"specialist {s['client_id']} ({s['domain']})", s, human(s["uploaded_bytes"]))
    row("specialists (mean)", results["specialists_mean"])
    for name, s in results["students"].items():
        row(f"student ({name.replace('_', ' ')})", s,
            human(results["bytes"]["uploaded_total"]) if name == "proxy_targets" else "")
    row("proxy only", results["proxy_only"])
    row("centralized", results["centralized"])
    for name, s in results["baselines"].items():
        row(name, s, human(s["total_bytes"]))
    out.print(table)
    _baselines_lines(results)


def _baselines_lines(results: dict) -> None:
    hits = results.get("bytes_to_student_perplexity", {})
    reached = [f"{n} {human(h['bytes']) if h['reached'] else 'not reached'}"
               for n, h in hits.items() if n != "target_perplexity"]
    if reached:
        out.print(plain(f"FedAvg's bytes to the student's perplexity "
                        f"({hits['target_perplexity']:.1f}): " + ", ".join(reached)))
    p = results.get("privacy")
    if p:
        aucs = [f"{n} {p[n]['auc']:.3f}" for n in p if isinstance(p[n], dict) and "auc" in p[n]]
        out.print(plain(f"membership-inference AUC (loss attack): specialists (mean) "
                        f"{p['specialists_mean_auc']:.3f}, " + ", ".join(aucs)))


def _embedding_table(results: dict, out_dir: Path) -> None:
    c = results["config"]
    table = Table(title=plain(f"fd simulate --task embedding: probes on the test split "
                              f"({out_dir}/results.json)"))
    for col in ("model", "linear probe", "k-NN", "neighbour agreement"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, p in results["probes"].items():
        table.add_row(plain(name), f"{p['linear_probe_accuracy']:.3f}",
                      f"{p['knn_accuracy']:.3f}",
                      f"{p['neighbour_agreement_with_specialists']:.3f}")
    out.print(table)
    b = results["bytes"]
    out.print(plain(f"relational bundles: {c['anchors']} anchors, top-{c['k']}: "
                    f"{b['relational_per_example']:.1f} bytes per example and client (label "
                    f"logits: {b['label_logit_per_example']:.1f}); relational minus "
                    f"label-logit student: {results['relational_minus_label_logit'] * 100:+.1f} "
                    "points"))
