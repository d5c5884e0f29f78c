"""``fd simulate``: a whole federation on this machine, and its table (each task prints its
own, :attr:`fdcli.tasks.Task.tables`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..console import print_json, reporting_errors
from ..tasks import choose_task
from ..tasks.base import resolve
from . import app
from .dispatch import run
from .stages import opt
from .options import JsonOpt, Overwrite, TaskOpt

S = partial(opt, "simulate")


@app.command(short_help="Run a whole federation here, against its baselines.")
def simulate(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "fd-simulation"),
    task: TaskOpt = None,
    data: Annotated[Optional[Path], S(
        "data", "A labelled image or text dataset (default: scikit-learn's digits); causal-lm: "
                "a text corpus (default: the standard library's source); seq2seq: source/"
                "target pairs (default: the standard library's functions and docstrings); "
                "token tasks also take a folder of one file (or sub-folder) per institution; "
                "embedding: unlabelled examples.")] = None,
    text_column: Annotated[Optional[str], S("text_column", "causal-lm --data: the text "
                                                           "column.")] = None,
    source_column: Annotated[Optional[str], S("source_column", "seq2seq --data: the source "
                                                               "column.")] = None,
    target_column: Annotated[Optional[str], S("target_column", "seq2seq --data: the target "
                                                               "column.")] = None,
    domain_column: Annotated[Optional[str], S(
        "domain_column", "Token tasks' --data: the column that names each document's domain or "
                         "institution (default: domain, institution or client).")]
    = None,
    label_column: Annotated[Optional[str], S(
        "label_column", "Token tasks' --data: split by Dirichlet(--alpha) over this column "
                        "instead of by domain.")] = None,
    split: Annotated[Optional[str], S("split", "Token tasks' --data: the dataset split.")]
    = None,
    num_clients: Annotated[Optional[int], S("num_clients", "Number of institutions.")] = None,
    alpha: Annotated[Optional[float], S("alpha", "Dirichlet concentration of the label "
                                                 "split.")] = None,
    proxy_fraction: Annotated[Optional[float], S("proxy_fraction", "Share of the data that "
                                                                   "becomes the shared proxy "
                                                                   "set.")] = None,
    validation_fraction: Annotated[Optional[float], S(
        "validation_fraction", "Share of the data held out as a labelled validation split "
                               "for choices (token tasks: of each institution's private "
                               "documents; 0 for none).")] = None,
    coordinator_validation: Annotated[Optional[bool], S(
        "coordinator_validation", "Let the coordinator use the validation split: stop the "
                                  "rounds when the student stops improving on it and report "
                                  "the best round (FedAvg's too).",
        "--coordinator-validation")] = None,
    rule: Annotated[Optional[str], S("rule", "Aggregation rule (see fd aggregate).")] = None,
    compare_rules: Annotated[Optional[str], S(
        "compare_rules", "Other rules to distill a student with from the last round's "
                         "bundles, comma-separated, '' for none.")] = None,
    architectures: Annotated[Optional[str], S("architectures", "Specialist architectures, "
                                                               "assigned in turn, "
                                                               "comma-separated.")] = None,
    student: Annotated[Optional[str], S("student", "Student architecture.")] = None,
    epochs: Annotated[Optional[float], S("epochs", "Specialist epochs.")] = None,
    distill_epochs: Annotated[Optional[float], S("distill_epochs", "Distillation epochs.")]
    = None,
    learning_rate: Annotated[Optional[float], S("learning_rate", "Learning rate.", "--lr")]
    = None,
    batch_size: Annotated[Optional[int], S("batch_size", "Batch size.")] = None,
    temperature: Annotated[Optional[float], S(
        "temperature", "Distillation temperature; embedding: the temperature of the anchor "
                       "similarities.")] = None,
    max_length: Annotated[Optional[int], S("max_length", "Tokens per block.")] = None,
    hard_weight: Annotated[Optional[float], S(
        "hard_weight", "Share of cross-entropy on the proxy's tokens in the student's "
                       "loss.")] = None,
    k: Annotated[Optional[int], S("k", "Ids (or anchors) kept per row in the bundles.")]
    = None,
    anchors: Annotated[Optional[int], S("anchors", "Anchor examples of the relational bundles "
                                                   "(capped at the proxy set's size).")]
    = None,
    banks: Annotated[Optional[str], S("banks", "The relational students' anchor banks, "
                                               "comma-separated (epoch, momentum); the first "
                                               "is the headline student.")] = None,
    proxy_pairs: Annotated[Optional[int], S("proxy_pairs", "Function/docstring pairs in the "
                                                           "proxy set.")] = None,
    client_chars: Annotated[Optional[int], S("client_chars", "Characters of source per "
                                                             "institution.")] = None,
    proxy_chars: Annotated[Optional[int], S("proxy_chars", "Characters of source in the proxy "
                                                           "set.")] = None,
    rounds: Annotated[Optional[int], S(
        "rounds", "Rounds of federated distillation: after the first, the consensus goes "
                  "back to the clients, which update their specialists from it and their "
                  "data (1 is one-shot).")] = None,
    round_epochs: Annotated[Optional[float], S("round_epochs", "Specialist epochs in each "
                                                               "round after the first.")]
    = None,
    round_distill_epochs: Annotated[Optional[float], S(
        "round_distill_epochs", "Epochs the student continues on each later round's "
                                "consensus.")] = None,
    digest_weight: Annotated[Optional[float], S(
        "digest_weight", "Later rounds: weight of KD toward the consensus in the "
                         "specialists' loss.")] = None,
    schedule: Annotated[Optional[str], S("schedule", "Later rounds: mixed or alternate (see "
                                                     "fd train-specialist).")] = None,
    from_student: Annotated[Optional[bool], S(
        "from_student", "Later rounds: start each specialist from the current student (a "
                        "public model; its weights count as downloaded bytes).",
        "--from-student")] = None,
    proxy_slices: Annotated[Optional[int], S(
        "proxy_slices", "Emit on a fresh slice of the proxy set each round, in turn, out of "
                        "this many.")] = None,
    sharpen: Annotated[Optional[float], S(
        "sharpen", "Sharpen every consensus to softmax(p / T) at this temperature (see fd "
                   "aggregate; 0 for none).")] = None,
    poison: Annotated[Optional[float], S(
        "poison", "Share of the clients that are hostile (e.g. 0.2): their bundles are "
                  "replaced by --poison-kind predictions every round.")] = None,
    poison_kind: Annotated[Optional[str], S(
        "poison_kind", "random (confident noise), flip (every class moved to the next), "
                       "overconfident (certainty on a wrong class or token) or shuffled "
                       "(predictions sent for other rows); token tasks: random, shuffled or "
                       "overconfident.")] = None,
    baselines: Annotated[Optional[str], S(
        "baselines", "Baselines to run, comma-separated: fedavg (Flower FedAvg, fp32 and "
                     "8-bit), fedprox (Flower FedProx), standalone (each specialist alone; a "
                     "student from one teacher), centralized ('' for none).")] = None,
    fedavg_rounds: Annotated[Optional[int], S("fedavg_rounds", "FedAvg rounds (0 for none).")]
    = None,
    fedavg_local_epochs: Annotated[Optional[float], S("fedavg_local_epochs",
                                                      "FedAvg local epochs per round.")]
    = None,
    fedavg_fraction: Annotated[Optional[float], S("fedavg_fraction", "Share of the clients "
                                                                     "FedAvg samples each "
                                                                     "round.")] = None,
    fedavg_tune_lrs: Annotated[Optional[str], S(
        "fedavg_tune_lrs", "Tune FedAvg on the validation split over these learning rates, "
                           "comma-separated (with --fedavg-tune-epochs: their grid).")] = None,
    fedavg_tune_epochs: Annotated[Optional[str], S(
        "fedavg_tune_epochs", "Tune FedAvg on the validation split over these local epochs, "
                              "comma-separated.")] = None,
    fedprox_mu: Annotated[Optional[float], S("fedprox_mu", "FedProx's proximal weight mu.")]
    = None,
    target_fraction: Annotated[Optional[float], S(
        "target_fraction", "bytes_to_target's target, as a share of the centralized "
                           "accuracy.")] = None,
    privacy: Annotated[Optional[bool], S("privacy", "Run the membership-inference attacks.",
                                         "--privacy/--no-privacy")] = None,
    dp_epsilons: Annotated[Optional[str], S(
        "dp_epsilons", "Add DP variants at these epsilons, comma-separated: fd with DP-SGD "
                       "specialists (classification: and DP-FedAvg), in a privacy-utility "
                       "table (docs/privacy.md).")] = None,
    dp_delta: Annotated[Optional[float], S("dp_delta", "With --dp-epsilons: delta.")] = None,
    max_grad_norm: Annotated[Optional[float], S(
        "max_grad_norm", "With --dp-epsilons: per-example gradient clipping norm.")] = None,
    seed: Annotated[Optional[int], S("seed", "Random seed, recorded in the output.")] = None,
    seeds: Annotated[Optional[int], S(
        "seeds", "Run the whole comparison at this many seeds (from --seed) and report mean, "
                 "sd and 95% intervals.")] = None,
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Run a whole federation here, against its baselines.

    Compares the student with each specialist and with Flower FedAvg (fp32 and 8-bit),
    standalone and centralized training; writes OUT/results.json, OUT/report.md,
    OUT/accuracy_vs_bytes.png and every artifact on the way. With no arguments: scikit-learn's
    digits and tiny random-init ViTs and ResNets (a text --data gets tiny BERTs). With
    [bold]--task causal-lm[/bold], institutions hold different Python standard-library
    packages and train small GPT-2 and Llama models; [bold]--task seq2seq[/bold]: small T5s
    write a function's docstring from its source; [bold]--task embedding[/bold]: relational
    bundles teach an encoder without labels. None needs a download.

    [bold]Example[/bold]: fd simulate --alpha 0.1 --out sim-alpha0.1

    [bold]Example[/bold]: fd simulate --task embedding --data snippets.csv --out sim-emb
    """
    def log(message: str) -> None:
        console.log("fd simulate", message)

    with reporting_errors():
        chosen = choose_task(task, None)
        results = run(ctx, "simulate", chosen, out_dir, overwrite=overwrite, progress=False,
                      log=log)
    if json_out:
        print_json(results)
        return
    resolve(chosen.tables)(results, out_dir)
