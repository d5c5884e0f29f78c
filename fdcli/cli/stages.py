"""The five stage commands: train-specialist, emit-logits, aggregate, distill, evaluate.

Each chooses its task (``--task``, or what the model's ``fd.json`` or config, or the bundle's
manifest, says), then runs the library function that the task registry names for it
(:func:`.dispatch.run`): options the task does not take are refused, and the defaults are
the task's declared ones, shown in each option's help.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..console import out, plain, print_json, report, reporting_errors
from ..launch import ranks
from ..rule_options import RULE_OPTIONS
from ..tasks import choose_task, task_of_bundle, task_of_model
from . import app
from . import options as opts
from .dispatch import given, refuse_foreign, run, task_help
from .options import (DataOpt, JsonOpt, LimitOpt, OutOpt, Overwrite, SignOpt, TaskOpt,
                      TrustedOpt)


def opt(command: str, name: str, text: str, *flags: str, **kw: Any):
    """A task option of ``command``: its help is ``text`` plus, from the registry, which
    tasks take it and with what default."""
    return typer.Option(*flags, help=task_help(command, name, text), **kw)


T = partial(opt, "train-specialist")
E = partial(opt, "emit-logits")
A = partial(opt, "aggregate")
D = partial(opt, "distill")
V = partial(opt, "evaluate")

_TEXT = "Text column (default: text, sentence, content or document)."
_IMAGE = "Image column (default: image or img, or any Image feature)."
_LABEL = "Label column (default: label, labels, target or class)."
_SPLIT = "Split of a multi-split dataset folder."
_TOKENIZER = "Tokenizer folder, for text models built from a config file."
_SOURCE = ("Source text column (default: source, input, inputs, src, document, question, "
           "prompt or text).")
_TARGET = ("Target text column (default: target, output, targets, tgt, summary, answer or "
           "completion).")
_MAXLEN = "Tokens per example block."
_PROMPT = ("Instruction data: the prompt column (with --response-column); rows and loss on "
           "response tokens only. A messages column (chat turns) is read without it.")
_RESPONSE = "Instruction data: the response column (with --prompt-column)."
_MAXSRC = "Source tokens kept."
_MAXTGT = "Target tokens kept, end-of-sequence included."
_PACKING = "Pack documents into full blocks, or truncate each document."
_DTYPE = ("Model precision: auto (bf16 on a GPU that supports it, else fp32), bf16, fp16 (GPU "
          "only) or fp32. Training uses mixed precision and saves fp32 weights.")
_SEED = "Random seed, recorded in the output."
_SIGN_MODEL = ("ECDSA private key (NAME.key, from fd keygen): sign the model folder (OpenSSF "
               "Model Signing, OUT/model.sig).")
_BATCH = "Batch size (examples, or blocks of tokens)."
_LORA_RANK = ("Train a LoRA adapter of this rank on a pretrained model (folder or GGUF "
              "file) instead of every weight; writes an adapter folder "
              "(docs/foundation-models.md).")
_LORA_ALPHA = "LoRA scaling numerator (the adapter's update is scaled by alpha / rank)."
_LORA_DROPOUT = "Dropout on the adapter's input."
_LORA_TARGETS = "Modules to adapt, comma-separated (e.g. q_proj,v_proj), or all-linear."
_LORA_TYPE = "lora, or dora (weight-decomposed LoRA)."
_QUANTIZE = "QLoRA: load the base in 4bit or 8bit (bitsandbytes, CUDA GPU only)."
_MERGE = "Write the adapter merged into full weights (an ordinary model folder)."
_CHECKPOINTING = "Gradient checkpointing: less activation memory, more compute."
_POOLING = ("mean (over tokens or the feature map), cls (the first token) or pooler (the "
            "model's own pooled output).")


@app.command("train-specialist",
             short_help="Fine-tune a specialist on this institution's private data.")
def train_specialist_cmd(
    ctx: typer.Context,
    data: DataOpt,
    model: Annotated[Path, typer.Option(help="A model folder that from_pretrained reads, or a "
                                             "JSON/YAML config with a model_type.")],
    out_dir: OutOpt,
    task: TaskOpt = None,
    client_id: Annotated[Optional[str], T("client_id", "Institution name, recorded in fd.json "
                                                       "and carried by its bundles.")] = None,
    labels: Annotated[Optional[str], T("labels", "The federation's label names, "
                                                 "comma-separated, in id order (default: read "
                                                 "from the data).")] = None,
    text_column: Annotated[Optional[str], T("text_column", _TEXT)] = None,
    prompt_column: Annotated[Optional[str], T("prompt_column", _PROMPT)] = None,
    response_column: Annotated[Optional[str], T("response_column", _RESPONSE)] = None,
    image_column: Annotated[Optional[str], T("image_column", _IMAGE)] = None,
    label_column: Annotated[Optional[str], T("label_column", _LABEL)] = None,
    source_column: Annotated[Optional[str], T("source_column", _SOURCE)] = None,
    target_column: Annotated[Optional[str], T("target_column", _TARGET)] = None,
    tokenizer: Annotated[Optional[Path], T("tokenizer", _TOKENIZER)] = None,
    split: Annotated[Optional[str], T("split", _SPLIT)] = None,
    max_length: Annotated[Optional[int], T("max_length", _MAXLEN)] = None,
    packing: Annotated[Optional[bool], T("packing", _PACKING, "--packing/--no-packing")] = None,
    max_source_length: Annotated[Optional[int], T("max_source_length", _MAXSRC)] = None,
    max_target_length: Annotated[Optional[int], T("max_target_length", _MAXTGT)] = None,
    epochs: Annotated[Optional[float], T("epochs", "Training epochs.")] = None,
    learning_rate: Annotated[Optional[float], T("learning_rate", "Learning rate.", "--lr")]
    = None,
    batch_size: Annotated[Optional[int], T("batch_size", _BATCH)] = None,
    val_fraction: Annotated[Optional[float], T("val_fraction", "Share held out for "
                                                               "validation.")] = None,
    teacher: Annotated[Optional[Path], T(
        "teacher", "A later round: the coordinator's consensus bundle, to digest on --proxy "
                   "while training on DATA (give --model the previous round's specialist).")]
    = None,
    proxy: Annotated[Optional[Path], T("proxy", "With --teacher: the proxy dataset the "
                                                "consensus was made on.")] = None,
    digest_weight: Annotated[Optional[float], T(
        "digest_weight", "With --teacher: weight of KD toward the consensus; 1 - it goes to "
                         "cross-entropy on DATA.")] = None,
    schedule: Annotated[Optional[str], T(
        "schedule", "With --teacher: mixed (proxy and private examples in the same batches, "
                    "one loss) or alternate (FedMD: digest for --epochs, then revisit for "
                    "--epochs).")] = None,
    temperature: Annotated[Optional[float], T("temperature", "With --teacher: distillation "
                                                             "temperature.")] = None,
    trusted_keys: Annotated[Optional[Path], T(
        "trusted_keys", "With --teacher: folder of trusted public keys; refuse a consensus "
                        "that is not signed by one of them (fd aggregate --sign-key).")] = None,
    lora_rank: Annotated[Optional[int], T("lora_rank", _LORA_RANK)] = None,
    lora_alpha: Annotated[Optional[float], T("lora_alpha", _LORA_ALPHA)] = None,
    lora_dropout: Annotated[Optional[float], T("lora_dropout", _LORA_DROPOUT)] = None,
    lora_targets: Annotated[Optional[str], T("lora_targets", _LORA_TARGETS)] = None,
    lora_type: Annotated[Optional[str], T("lora_type", _LORA_TYPE)] = None,
    quantize: Annotated[Optional[str], T("quantize", _QUANTIZE)] = None,
    merge: Annotated[Optional[bool], T("merge", _MERGE, "--merge")] = None,
    gradient_checkpointing: Annotated[Optional[bool], T(
        "gradient_checkpointing", _CHECKPOINTING, "--gradient-checkpointing")] = None,
    dp_epsilon: Annotated[Optional[float], T(
        "dp_epsilon", "Train with DP-SGD (Opacus) to this epsilon per training example "
                      "(causal-lm: per block of one document); "
                      "fd.json and the bundles record the guarantee (docs/privacy.md).")]
    = None,
    dp_delta: Annotated[Optional[float], T("dp_delta", "With --dp-epsilon: delta (keep it "
                                                       "below 1 / examples).")] = None,
    max_grad_norm: Annotated[Optional[float], T(
        "max_grad_norm", "With --dp-epsilon: per-example gradient clipping norm (L2).")]
    = None,
    dtype: Annotated[Optional[str], T("dtype", _DTYPE)] = None,
    sign_key: Annotated[Optional[Path], T("sign_key", _SIGN_MODEL)] = None,
    seed: Annotated[Optional[int], T("seed", _SEED)] = None,
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Fine-tune a specialist on this institution's private data.

    Labelled examples (classification), text (causal-lm) or source/target pairs (seq2seq);
    the task is what --model's fd.json or config says, else --task, else classification.
    Writes a model folder (weights, tokenizer or image processor, fd.json with the
    configuration, client id, label names or vocabulary fingerprint, and metrics). In a later
    round, [bold]--teacher[/bold] and [bold]--proxy[/bold] update the previous specialist from
    the coordinator's consensus as well (docs/rounds.md).

    [bold]Example[/bold]: fd train-specialist private.csv --model bert-tiny/ --client-id
    hospital-a --out specialist

    [bold]Round 2[/bold]: fd train-specialist private.csv --model specialist/ --teacher
    usb/consensus-1 --proxy proxy.csv --out specialist-2
    """
    with reporting_errors():
        chosen = choose_task(task, task_of_model(model))
        meta = run(ctx, "train-specialist", chosen, data, model, out_dir, overwrite=overwrite)
    extra = {"round": meta["round"], "consensus_sha256": meta["consensus"]["sha256"]} \
        if "round" in meta else {}
    report({"out": str(out_dir), "task": chosen.name, "client_id": meta["client_id"],
            "architecture": meta["architecture"], "train_examples": meta["train_examples"],
            **({"train_tokens": meta["train_tokens"]} if "train_tokens" in meta else {}),
            **({"dp_epsilon": meta["privacy"]["epsilon"], "dp_delta": meta["privacy"]["delta"]}
               if "privacy" in meta else {}),
            **extra, **meta["metrics"]}, json_out, "specialist")


@app.command("emit-logits",
             short_help="Run a model over the proxy set and write a logit bundle.")
def emit_logits_cmd(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A trained model folder.")],
    proxy: Annotated[Path, typer.Argument(help="The shared proxy dataset.")],
    out_dir: OutOpt,
    task: TaskOpt = None,
    encoding: Annotated[Optional[str], E("encoding", "dense, topk, or for token tasks "
                                                     "sample.")] = None,
    k: Annotated[Optional[int], E("k", "topk: ids (or anchors) kept per row.")] = None,
    value_dtype: Annotated[Optional[str], E("value_dtype", "topk values: int8 or fp16.")]
    = None,
    draws: Annotated[Optional[int], E("draws", "sample: ids drawn per token.")] = None,
    sample_temperature: Annotated[Optional[float], E(
        "sample_temperature", "sample: temperature the ids are drawn at (distill at the same "
                              "one).")] = None,
    client_id: Annotated[Optional[str], E("client_id", "Institution name.")] = None,
    declare_label_counts: Annotated[Optional[bool], E(
        "declare_label_counts", "Write the model's training label counts into the manifest, "
                                "for the coverage rule. This discloses the client's class "
                                "mix.", "--declare-label-counts")] = None,
    proxy_slice: Annotated[Optional[str], E(
        "proxy_slice", "Emit only slice I of N contiguous slices of the proxy set, as I/N (a "
                       "fresh slice each round).", "--slice")] = None,
    text_column: Annotated[Optional[str], E("text_column", _TEXT)] = None,
    prompt_column: Annotated[Optional[str], E("prompt_column", _PROMPT)] = None,
    response_column: Annotated[Optional[str], E("response_column", _RESPONSE)] = None,
    image_column: Annotated[Optional[str], E("image_column", _IMAGE)] = None,
    source_column: Annotated[Optional[str], E("source_column", _SOURCE)] = None,
    target_column: Annotated[Optional[str], E("target_column", _TARGET)] = None,
    tokenizer: Annotated[Optional[Path], E("tokenizer", _TOKENIZER)] = None,
    split: Annotated[Optional[str], E("split", _SPLIT)] = None,
    max_length: Annotated[Optional[int], E("max_length", _MAXLEN)] = None,
    packing: Annotated[Optional[bool], E("packing", _PACKING, "--packing/--no-packing")] = None,
    max_source_length: Annotated[Optional[int], E("max_source_length", _MAXSRC)] = None,
    max_target_length: Annotated[Optional[int], E("max_target_length", _MAXTGT)] = None,
    batch_size: Annotated[Optional[int], E("batch_size", _BATCH)] = None,
    anchors: Annotated[Optional[int], E("anchors", "Anchor examples picked from the proxy set "
                                                   "with --seed.")] = None,
    temperature: Annotated[Optional[float], E("temperature", "Temperature of the anchor "
                                                             "similarities.")] = None,
    pooling: Annotated[Optional[str], E("pooling", _POOLING)] = None,
    sign_key: Annotated[Optional[Path], E(
        "sign_key", "Private key (NAME.key, from fd keygen) to sign the bundle with: OpenSSF "
                    "Model Signing (model.sig) with an ECDSA key.")] = None,
    dtype: Annotated[Optional[str], E("dtype", _DTYPE)] = None,
    seed: Annotated[Optional[int], E("seed", _SEED)] = None,
    resume: Annotated[Optional[bool], E(
        "resume", "Continue an emit of --out with the same settings that was killed or "
                  "interrupted, from its last complete shard.", "--resume")] = None,
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Run a model over the proxy dataset and write a logit bundle to carry out.

    Classification: a row per example. causal-lm: a row per token position. seq2seq: a row
    per target token, teacher-forced on the proxy's targets (fd generate writes targets for a
    proxy set that has none). embedding ([bold]--task embedding[/bold], any encoder): a row of
    top-k cosine similarities to --anchors proxy examples.

    [bold]Example[/bold]: fd emit-logits specialist/ proxy.csv --client-id hospital-a --out
    usb/hospital-a

    [bold]Example[/bold]: fd emit-logits encoder/ proxy.csv --task embedding --anchors 1024
    --client-id hospital-a --out usb/hospital-a-relations
    """
    with reporting_errors():
        chosen = choose_task(task, task_of_model(model))
        m = run(ctx, "emit-logits", chosen, model, proxy, out_dir, overwrite=overwrite)
    size = sum(s.bytes for s in m.shards)
    report({"out": str(out_dir), "task": chosen.name, "client_id": m.producer.client_id,
            "examples": m.examples, "rows": m.rows, "encoding": m.encoding, "bytes": size,
            "bytes_per_row": size / max(m.rows, 1), **m.fidelity}, json_out, "bundle")


@app.command(short_help="Check bundles and combine them into one teacher bundle.")
def aggregate(
    ctx: typer.Context,
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folders to combine.")],
    out_dir: OutOpt,
    task: TaskOpt = None,
    rule: Annotated[Optional[str], A("rule", "confidence, mean, entropy-reduction, weighted, "
                                             "coverage, median, trimmed-mean, or gnmax (PATE's "
                                             "differentially private vote).")] = None,
    confidence_measure: Annotated[Optional[str], A(
        "confidence_measure", "confidence rule: max or neg_entropy.", "--confidence")] = None,
    tau: Annotated[Optional[float], A("tau", "confidence rule: softmax temperature over "
                                             "clients.")] = None,
    era_temperature: Annotated[Optional[float], A(
        "era_temperature", "entropy-reduction rule: sharpening temperature.")] = None,
    trim: Annotated[Optional[float], A("trim", "trimmed-mean rule: share trimmed at each "
                                               "end.")] = None,
    prior_correction: Annotated[Optional[bool], A(
        "prior_correction", "coverage rule: divide each client's probabilities by its label "
                            "prior first.", "--prior-correction/--no-prior-correction")] = None,
    sharpen: Annotated[Optional[float], A(
        "sharpen", "Sharpen the result to softmax(p / T) at this temperature (DS-FL's "
                   "entropy reduction, after any rule; 0.1 is DS-FL's; 0 for none).")] = None,
    k: Annotated[Optional[int], A("k", "Ids (or anchors) kept per row in the result.")]
    = None,
    value_dtype: Annotated[Optional[str], A("value_dtype", "int8 or fp16 values.")] = None,
    outlier_z: Annotated[Optional[float], A(
        "outlier_z", "Flag a client whose distance from the consensus has a robust z-score "
                     "above this.")] = None,
    dp_sigma: Annotated[Optional[float], A(
        "dp_sigma", "gnmax rule: standard deviation of the Gaussian noise on the vote counts "
                    "(docs/privacy.md).")] = None,
    dp_threshold: Annotated[Optional[float], A(
        "dp_threshold", "gnmax rule: answer only examples whose noisy top vote reaches this "
                        "(Confident-GNMax); the others are left out.")] = None,
    dp_threshold_sigma: Annotated[Optional[float], A(
        "dp_threshold_sigma", "gnmax rule: noise of the threshold check (default: twice "
                              "--dp-sigma).")] = None,
    dp_delta: Annotated[Optional[float], A("dp_delta", "gnmax rule: delta of the guarantee.")]
    = None,
    trusted_keys: TrustedOpt = None, sign_key: SignOpt = None, limits: LimitOpt = None,
    seed: Annotated[Optional[int], A("seed", _SEED)] = None,
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Check bundles against each other and combine them per example into one teacher.

    The task is the bundles' own (their manifests). Token and embedding bundles are
    streamed and combined per row over the union of the clients' kept ids, then
    re-sparsified to [bold]--k[/bold]. The same bundle twice, one client voting twice on an
    example, two models that share a client id, and an [bold]--out[/bold] inside an input are
    refused. Prints each client's distance from the consensus (the median of all clients)
    and flags outliers; the teacher's provenance records the same.

    [bold]Example[/bold]: fd aggregate usb/* --rule median --trusted-keys keys/ --out teacher
    """
    with reporting_errors():
        chosen = choose_task(task, task_of_bundle(bundles[0], opts.limits(limits)),
                             model=False)
        rule_name = rule or chosen.command("aggregate").options["rule"]
        declared = chosen.command("aggregate").options  # others: refused for the task
        picked = {k: v for k, v in given(ctx).items() if k in RULE_OPTIONS and k in declared}
        takes = {k: None for k, rules in RULE_OPTIONS.items() if rule_name in rules}
        refuse_foreign(ctx, "aggregate", picked, takes, f"to --rule {rule_name}")
        m = run(ctx, "aggregate", chosen, bundles, out_dir, overwrite=overwrite)
    if not ranks().main:  # several processes: process 0 reports the merged teacher
        return
    clients = [{key: p.get(key) for key in ("path", "client_id", "signer", "examples",
                                            "distance_from_consensus", "agreement",
                                            "robust_z", "outlier")} for p in m.provenance]
    summary = {"out": str(out_dir), "rule": m.producer.config.get("rule"), "inputs":
               len(bundles), "task": chosen.name, "examples": m.examples, "rows": m.rows,
               "bytes": sum(s.bytes for s in m.shards),
               "outliers": [c["client_id"] for c in clients if c["outlier"]]}
    privacy = m.producer.config.get("privacy")
    if privacy:  # no distances from the consensus: they would disclose the votes
        summary |= {"dp_epsilon": privacy["epsilon"], "dp_delta": privacy["delta"],
                    "answered": privacy["answered"]}
    if json_out:
        print_json({**summary, "clients": clients})
        return
    report(summary, False, "aggregated bundle")
    if privacy:
        return
    table = Table(title="clients: distance from the consensus", title_justify="left")
    for name in ("client", "bundle", "signer"):
        table.add_column(name, overflow="fold")
    for name in ("distance", "agreement", "robust z", ""):
        table.add_column(name)
    for c in clients:
        table.add_row(plain(c["client_id"]), plain(c["path"]), plain(str(c["signer"] or "-")),
                      f"{c['distance_from_consensus']:.3f}", f"{c['agreement']:.3f}",
                      f"{c['robust_z']:.1f}",
                      Text("outlier", style="bold red") if c["outlier"] else "")
    out.print(table)


@app.command(short_help="Train a student on the proxy set against a teacher bundle.")
def distill(
    ctx: typer.Context,
    student: Annotated[Path, typer.Argument(help="Student model folder or config file.")],
    proxy: Annotated[Path, typer.Argument(help="The proxy dataset the bundle was made on.")],
    teacher: Annotated[Path, typer.Argument(help="The aggregated bundle.")],
    out_dir: OutOpt,
    task: TaskOpt = None,
    temperature: Annotated[Optional[float], D("temperature", "Distillation temperature T.")]
    = None,
    hard_weight: Annotated[Optional[float], D(
        "hard_weight", "Weight of cross-entropy on the proxy's labels, or on its next or "
                       "target tokens.")] = None,
    text_column: Annotated[Optional[str], D("text_column", _TEXT)] = None,
    image_column: Annotated[Optional[str], D("image_column", _IMAGE)] = None,
    label_column: Annotated[Optional[str], D("label_column", _LABEL)] = None,
    source_column: Annotated[Optional[str], D("source_column", _SOURCE)] = None,
    target_column: Annotated[Optional[str], D("target_column", _TARGET)] = None,
    tokenizer: Annotated[Optional[Path], D("tokenizer", _TOKENIZER)] = None,
    split: Annotated[Optional[str], D("split", _SPLIT)] = None,
    epochs: Annotated[Optional[float], D("epochs", "Training epochs.")] = None,
    learning_rate: Annotated[Optional[float], D("learning_rate", "Learning rate.", "--lr")]
    = None,
    batch_size: Annotated[Optional[int], D("batch_size", _BATCH)] = None,
    max_length: Annotated[Optional[int], D("max_length", _MAXLEN)] = None,
    bank: Annotated[Optional[str], D(
        "bank", "How the student's own anchor embeddings are kept: epoch (re-embedded each "
                "epoch) or momentum (a momentum encoder re-embeds a batch of them each "
                "step).")] = None,
    pooling: Annotated[Optional[str], D("pooling", _POOLING)] = None,
    trusted_keys: TrustedOpt = None, limits: LimitOpt = None,
    lora_rank: Annotated[Optional[int], D("lora_rank", _LORA_RANK)] = None,
    lora_alpha: Annotated[Optional[float], D("lora_alpha", _LORA_ALPHA)] = None,
    lora_dropout: Annotated[Optional[float], D("lora_dropout", _LORA_DROPOUT)] = None,
    lora_targets: Annotated[Optional[str], D("lora_targets", _LORA_TARGETS)] = None,
    lora_type: Annotated[Optional[str], D("lora_type", _LORA_TYPE)] = None,
    quantize: Annotated[Optional[str], D("quantize", _QUANTIZE)] = None,
    merge: Annotated[Optional[bool], D("merge", _MERGE, "--merge")] = None,
    gradient_checkpointing: Annotated[Optional[bool], D(
        "gradient_checkpointing", _CHECKPOINTING, "--gradient-checkpointing")] = None,
    dtype: Annotated[Optional[str], D("dtype", _DTYPE)] = None,
    sign_key: Annotated[Optional[Path], D("sign_key", _SIGN_MODEL)] = None,
    seed: Annotated[Optional[int], D("seed", _SEED)] = None,
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Train a student of any architecture on the proxy set against a teacher bundle.

    The task is the teacher bundle's. Classification: KL at T, times T^2. causal-lm and
    seq2seq: per token, with the sparse (tail-bucket) or sampled KD loss, mixed half and half
    with cross-entropy on the proxy's tokens; the student shares the teachers' tokenizer.
    embedding: an encoder of any width whose similarities to the bundle's anchors match the
    teachers'.

    [bold]Example[/bold]: fd distill student.json proxy.csv teacher/ --out student
    """
    with reporting_errors():
        chosen = choose_task(task, task_of_bundle(teacher, opts.limits(limits)), model=False)
        meta = run(ctx, "distill", chosen, student, proxy, teacher, out_dir,
                   overwrite=overwrite)
    report({"out": str(out_dir), "task": chosen.name, "architecture": meta["architecture"],
            **{k: meta[k] for k in ("proxy_examples", "proxy_tokens", "anchors") if k in meta},
            **meta["metrics"]}, json_out, "student")


@app.command(short_help="Score a model on held-out data, by its task.")
def evaluate(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A model folder.")],
    data: DataOpt,
    task: TaskOpt = None,
    text_column: Annotated[Optional[str], V("text_column", _TEXT)] = None,
    prompt_column: Annotated[Optional[str], V("prompt_column", _PROMPT)] = None,
    response_column: Annotated[Optional[str], V("response_column", _RESPONSE)] = None,
    image_column: Annotated[Optional[str], V("image_column", _IMAGE)] = None,
    label_column: Annotated[Optional[str], V("label_column", _LABEL)] = None,
    source_column: Annotated[Optional[str], V("source_column", _SOURCE)] = None,
    target_column: Annotated[Optional[str], V("target_column", _TARGET)] = None,
    tokenizer: Annotated[Optional[Path], V("tokenizer", _TOKENIZER)] = None,
    split: Annotated[Optional[str], V("split", _SPLIT)] = None,
    batch_size: Annotated[Optional[int], V("batch_size", _BATCH)] = None,
    max_length: Annotated[Optional[int], V("max_length", _MAXLEN)] = None,
    packing: Annotated[Optional[bool], V("packing", _PACKING, "--packing/--no-packing")] = None,
    max_source_length: Annotated[Optional[int], V("max_source_length", _MAXSRC)] = None,
    max_target_length: Annotated[Optional[int], V("max_target_length", _MAXTGT)] = None,
    mia: Annotated[Optional[bool], V("mia", "Also run membership-inference attacks (needs "
                                            "--members and --nonmembers).", "--mia")] = None,
    members: Annotated[Optional[Path], V("members", "--mia: examples the model was trained "
                                                    "on.")] = None,
    nonmembers: Annotated[Optional[Path], V("nonmembers", "--mia: held-out examples from the "
                                                          "same distribution.")] = None,
    references: Annotated[Optional[list[Path]], V(
        "references", "--mia: a reference model trained without those examples "
                      "(repeatable), for the reference attack.", "--reference")] = None,
    match_labels: Annotated[Optional[bool], V(
        "match_labels", "--mia: weight the non-members to the members' label mix.",
        "--match-labels")] = None,
    teacher: Annotated[Optional[Path], V(
        "teacher", "causal-lm: a token bundle to measure the model's agreement with; "
                   "embedding: another model whose nearest-neighbour sets to compare with.")]
    = None,
    proxy: Annotated[Optional[Path], V("proxy", "The proxy text the --teacher bundle was made "
                                                "on.")] = None,
    probe_train: Annotated[Optional[Path], V(
        "probe_train", "Labelled data to fit the linear probe and k-NN on (default: 5-fold "
                       "cross-validation on DATA).")] = None,
    pooling: Annotated[Optional[str], V("pooling", _POOLING)] = None,
    knn: Annotated[Optional[int], V("knn", "Neighbours that vote in k-NN.")] = None,
    neighbours: Annotated[Optional[int], V("neighbours", "Size of the neighbour sets compared "
                                                         "with --teacher.")] = None,
    dtype: Annotated[Optional[str], V("dtype", _DTYPE)] = None,
    seed: Annotated[Optional[int], V("seed", _SEED)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a model on held-out data, by its task.

    Classification: accuracy, macro-F1, NLL and expected calibration error (with
    [bold]--mia[/bold], membership-inference AUC and TPR at 1% and 0.1% FPR). causal-lm:
    perplexity and next-token accuracy (and agreement with a teacher bundle, given
    [bold]--teacher[/bold] and [bold]--proxy[/bold]). seq2seq: BLEU, chrF and ROUGE-L of
    greedy decodes, and the targets' NLL. embedding: linear-probe and k-NN accuracy, and with
    [bold]--teacher[/bold] how far two models' neighbour sets agree.

    [bold]Example[/bold]: fd evaluate student/ test.csv --json

    [bold]Example[/bold]: fd evaluate student/ test.csv --task embedding --probe-train
    proxy-labels.csv --teacher specialist/
    """
    with reporting_errors():
        chosen = choose_task(task, task_of_model(model))
        result = run(ctx, "evaluate", chosen, model, data)
    for key, value in list(result.items()):  # nested figures (agreement with a teacher)
        if isinstance(value, dict):
            del result[key]
            result.update({f"{key.removesuffix('_agreement')}_{k}": v
                           for k, v in value.items()})
    report(result, json_out, "evaluation")
