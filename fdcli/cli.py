"""The ``fd`` command line: one thin command per stage over the library in :mod:`fdcli`.

Each command parses its options, calls one library function and prints the result. Any
:class:`~fdcli.errors.FdError` is printed to stderr and the command exits 1, without a
traceback. Heavy libraries are imported inside the command bodies. The stage commands live
here; ``cli_bundles`` (inspect, verify, keygen, merge), ``cli_data`` (partition, generate) and
``cli_simulate`` add theirs to ``app``;
``console`` does the printing and ``cli_options`` holds the shared options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from . import __version__
from . import cli_options as opts
from .cli_options import (Batch, DataOpt, DtypeOpt, Epochs, ImageCol, JsonOpt, LabelCol,
                          LimitOpt, LR, MaxLen, MaxSrc, MaxTgt, OutOpt, Overwrite, Packing,
                          PoolingOpt, SeedOpt, SignOpt, SourceCol, SplitOpt, TargetCol,
                          TaskOpt, TextCol, TokenizerOpt, TrustedOpt)
from .console import configure_output, out, plain, print_json, report, reporting_errors
from .launch import ranks

app = typer.Typer(
    name="fd",
    help="[bold]fd[/bold]: federated distillation for open foundation models.\n\n"
         "Institutions share compressed logits on a public proxy set ([i]logit bundles[/i]), "
         "never data or weights. Everything works offline.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"fd {__version__}", highlight=False)
        raise typer.Exit()


#: the commands that run under several processes (torchrun, accelerate launch; docs/scaling.md)
MULTI_PROCESS = ("train-specialist", "emit-logits", "distill", "evaluate")


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print fd's version and exit.")]
    = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show other libraries' progress bars and reports "
                                "(transformers, datasets).")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only results and errors.")] = False,
) -> None:
    """fd: federated distillation for open foundation models."""
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet exclude each other")
    configure_output(verbose=verbose, quiet=quiet)
    with reporting_errors():
        world = ranks().world
        if ctx.invoked_subcommand not in MULTI_PROCESS and world > 1:
            # every process would write the same output
            raise ValueError(f"fd {ctx.invoked_subcommand} runs in one process, but "
                             f"WORLD_SIZE={world} (torchrun or accelerate launch); run it "
                             f"without the launcher (only {', '.join(MULTI_PROCESS)} scale "
                             "out)")



@app.command("train-specialist")
def train_specialist_cmd(
    data: DataOpt,
    model: Annotated[Path, typer.Option(help="A model folder that from_pretrained reads, or a "
                                             "JSON/YAML config with a model_type.")],
    out_dir: OutOpt,
    client_id: Annotated[Optional[str], typer.Option(
        help="Institution name, recorded in fd.json and carried by its bundles (default: "
             "the id of the specialist --model continues, else the output folder's name "
             "plus 6 random hex digits, e.g. specialist-1-3f9a2c).")] = None,
    labels: Annotated[Optional[str], typer.Option(
        help="The federation's label names, comma-separated, in id order (default: read "
             "from the data).")] = None,
    text_column: TextCol = None, image_column: ImageCol = None, label_column: LabelCol = None,
    tokenizer: TokenizerOpt = None, split: SplitOpt = None,
    epochs: Epochs = 3.0, lr: LR = 5e-5, batch_size: Batch = 16,
    val_fraction: Annotated[float, typer.Option(help="Share held out for validation.")] = 0.0,
    task: TaskOpt = "classification", max_length: MaxLen = None, packing: Packing = True,
    source_column: SourceCol = None, target_column: TargetCol = None,
    max_source_length: MaxSrc = None, max_target_length: MaxTgt = None,
    teacher: Annotated[Optional[Path], typer.Option(
        help="A later round: the coordinator's consensus bundle, to digest on --proxy while "
             "training on DATA (give --model the previous round's specialist).")] = None,
    proxy: Annotated[Optional[Path], typer.Option(
        help="With --teacher: the proxy dataset the consensus was made on.")] = None,
    digest_weight: Annotated[float, typer.Option(
        help="With --teacher: weight of KD toward the consensus; 1 - it goes to "
             "cross-entropy on DATA.")] = 0.2,
    schedule: Annotated[str, typer.Option(
        help="With --teacher: mixed (proxy and private examples in the same batches, one "
             "loss) or alternate (FedMD: digest for --epochs, then revisit for --epochs).")]
    = "mixed",
    temperature: Annotated[float, typer.Option(
        help="With --teacher: distillation temperature.")] = 2.0,
    trusted_keys: Annotated[Optional[Path], typer.Option(
        help="With --teacher: folder of trusted public keys; refuse a consensus that is not "
             "signed by one of them (fd aggregate --sign-key).")] = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Fine-tune a specialist on this institution's private data: labelled examples, text
    for a causal language model ([bold]--task causal-lm[/bold]), or source/target pairs for an
    encoder-decoder model such as T5 or BART ([bold]--task seq2seq[/bold]).

    Writes a model folder (weights, tokenizer or image processor, fd.json with the
    configuration, label names or vocabulary fingerprint, and metrics). In a later round,
    [bold]--teacher[/bold] and [bold]--proxy[/bold] update the previous specialist from the
    coordinator's consensus as well (docs/rounds.md); fd.json records the round and the
    consensus's sha256.

    [bold]Example[/bold]: fd train-specialist private.csv --model bert-tiny/ --out specialist

    [bold]Round 2[/bold]: fd train-specialist private.csv --model specialist/ --teacher
    usb/consensus-1 --proxy proxy.csv --out specialist-2
    """
    from .stages.lm import train_lm_specialist
    from .stages.seq2seq import train_seq2seq_specialist
    from .stages.train_specialist import train_specialist

    with reporting_errors():
        opts.check_task(task)
        opts.seq2seq_only(task, max_length, source_column=source_column,
                          target_column=target_column, max_source_length=max_source_length,
                          max_target_length=max_target_length)
        dtype = opts.dtype(dtype)
        if task != "classification" and (teacher is not None or proxy is not None):
            raise ValueError("--teacher and --proxy (rounds) apply to --task classification")
        if task == "seq2seq":
            meta = train_seq2seq_specialist(
                data, model, out_dir, tokenizer=tokenizer, client_id=client_id,
                source_column=source_column, target_column=target_column, split=split,
                max_source_length=max_source_length, max_target_length=max_target_length,
                epochs=epochs, learning_rate=lr, batch_size=batch_size,
                val_fraction=val_fraction, seed=seed, overwrite=overwrite, dtype=dtype)
        elif task == "causal-lm":
            meta = train_lm_specialist(data, model, out_dir, tokenizer=tokenizer,
                                       client_id=client_id, text_column=text_column,
                                       split=split, max_length=max_length, packing=packing,
                                       epochs=epochs, learning_rate=lr, batch_size=batch_size,
                                       val_fraction=val_fraction, seed=seed,
                                       overwrite=overwrite, dtype=dtype)
        if task != "classification":
            report({"out": str(out_dir), "client_id": meta["client_id"],
                    "architecture": meta["architecture"],
                    "train_examples": meta["train_examples"],
                    "train_tokens": meta["train_tokens"], **meta["metrics"]}, json_out,
                   "specialist")
            return
        meta = train_specialist(data, model, out_dir, client_id=client_id,
                                labels=labels.split(",") if labels else None,
                                text_column=text_column, image_column=image_column,
                                label_column=label_column, tokenizer=tokenizer, split=split,
                                epochs=epochs, learning_rate=lr, batch_size=batch_size,
                                val_fraction=val_fraction, teacher=teacher, proxy=proxy,
                                digest_weight=digest_weight, schedule=schedule,
                                temperature=temperature, seed=seed, overwrite=overwrite,
                                trusted_keys=opts.trusted(trusted_keys), dtype=dtype)
    extra = {"round": meta["round"], "consensus_sha256": meta["consensus"]["sha256"]} \
        if "round" in meta else {}
    report({"out": str(out_dir), "client_id": meta["client_id"],
            "architecture": meta["architecture"], "train_examples": meta["train_examples"],
            **extra, **meta["metrics"]}, json_out, "specialist")


@app.command("emit-logits")
def emit_logits_cmd(
    model: Annotated[Path, typer.Argument(help="A trained model folder.")],
    proxy: Annotated[Path, typer.Argument(help="The shared proxy dataset.")],
    out_dir: OutOpt,
    encoding: Annotated[Optional[str], typer.Option(
        help="dense or topk; causal-lm and seq2seq also sample. Default: dense for "
             "classification; for causal-lm and seq2seq topk, or sample when --draws is "
             "given.")] = None,
    k: Annotated[Optional[int], typer.Option(help="Ids kept per row for topk (default: 16; "
                                                  "embedding: 64 anchors).")]
    = None,
    value_dtype: Annotated[str, typer.Option(help="topk values: int8 or fp16.")] = "int8",
    draws: Annotated[Optional[int], typer.Option(
        help="sample: ids drawn per token (default: 8).")] = None,
    sample_temperature: Annotated[float, typer.Option(
        help="sample: temperature the ids are drawn at (distill at the same one).")] = 1.0,
    client_id: Annotated[Optional[str], typer.Option(
        help="Institution name (default: the id in the model's fd.json; for a folder fd "
             "did not train, its name plus 6 hex digits of the model's fingerprint).")] = None,
    declare_label_counts: Annotated[bool, typer.Option(
        "--declare-label-counts", help="Write the model's training label counts into the "
        "manifest, for the coverage rule. This discloses the client's class mix.")] = False,
    proxy_slice: Annotated[Optional[str], typer.Option(
        "--slice", help="Emit only slice I of N contiguous slices of the proxy set, as I/N "
        "(a fresh slice each round; classification).")] = None,
    task: TaskOpt = "classification", max_length: MaxLen = None, packing: Packing = True,
    source_column: SourceCol = None, target_column: TargetCol = None,
    max_source_length: MaxSrc = None, max_target_length: MaxTgt = None,
    text_column: TextCol = None, image_column: ImageCol = None, tokenizer: TokenizerOpt = None,
    split: SplitOpt = None, batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size (default: 64, or 8 blocks for causal-lm).")] = None,
    anchors: Annotated[Optional[int], typer.Option(
        help="embedding: anchor examples picked from the proxy set with --seed (default: "
             "1024, or the whole proxy set if smaller).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        help="embedding: temperature of the anchor similarities (default: 0.1).")] = None,
    pooling: PoolingOpt = None,
    sign_key: SignOpt = None, dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Run a model over the proxy dataset and write a logit bundle to carry out. With
    [bold]--task causal-lm[/bold] every token position is a row; with [bold]--task
    seq2seq[/bold] every target token, teacher-forced on the proxy's targets (fd generate
    writes targets for a proxy set that has none). With [bold]--task embedding[/bold] any
    encoder's row is its top-k cosine similarities to --anchors proxy examples (a relational
    bundle: no labels, any architecture).

    [bold]Example[/bold]: fd emit-logits specialist/ proxy.csv --out usb/hospital-a-bundle

    [bold]Example[/bold]: fd emit-logits specialist/ proxy.csv --task embedding --anchors 1024
    --out usb/hospital-a-relations
    """
    from .embedding import EMBEDDING_TEMPERATURE
    from .stages.embedding import emit_embedding_logits
    from .stages.emit import emit_logits
    from .stages.lm import emit_token_logits
    from .stages.seq2seq import emit_seq2seq_logits

    kept = (64 if task == "embedding" else 16) if k is None else k
    with reporting_errors():
        opts.check_task(task)
        opts.seq2seq_only(task, max_length, source_column=source_column,
                          target_column=target_column, max_source_length=max_source_length,
                          max_target_length=max_target_length)
        opts.embedding_only(task, anchors=anchors, temperature=temperature, pooling=pooling)
        dtype = opts.dtype(dtype)
        key = opts.sign_key(sign_key)
        if task == "embedding":
            if declare_label_counts or proxy_slice or draws is not None:
                raise ValueError("--declare-label-counts, --slice and --draws do not apply to "
                                 "--task embedding")
            m = emit_embedding_logits(
                model, proxy, out_dir, anchors=anchors,
                temperature=EMBEDDING_TEMPERATURE if temperature is None else temperature,
                pooling=pooling or "mean", encoding=encoding or "topk", k=kept,
                value_dtype=value_dtype, client_id=client_id, text_column=text_column,
                image_column=image_column, tokenizer=tokenizer, split=split,
                batch_size=batch_size or 64, seed=seed, overwrite=overwrite, sign_key=key,
                dtype=dtype)
        elif task != "classification":
            if declare_label_counts or proxy_slice:
                raise ValueError("--declare-label-counts and --slice apply to --task "
                                 "classification")
            common = dict(encoding=encoding, k=k, value_dtype=value_dtype, draws=draws,
                          sample_temperature=sample_temperature, tokenizer=tokenizer,
                          client_id=client_id, split=split, batch_size=batch_size or 8,
                          seed=seed, overwrite=overwrite, sign_key=key, dtype=dtype)
            if task == "seq2seq":
                m = emit_seq2seq_logits(model, proxy, out_dir, source_column=source_column,
                                        target_column=target_column,
                                        max_source_length=max_source_length,
                                        max_target_length=max_target_length, **common)
            else:
                m = emit_token_logits(model, proxy, out_dir, text_column=text_column,
                                      max_length=max_length, packing=packing, **common)
        else:
            if draws is not None:
                raise ValueError("--draws applies to --task causal-lm and seq2seq (--encoding "
                                 "sample)")
            m = emit_logits(model, proxy, out_dir, encoding=encoding or "dense", k=kept,
                            value_dtype=value_dtype, client_id=client_id,
                            declare_label_counts=declare_label_counts,
                            proxy_slice=_slice(proxy_slice),
                            text_column=text_column, image_column=image_column, split=split,
                            batch_size=batch_size or 64, seed=seed, overwrite=overwrite,
                            sign_key=key, dtype=dtype)
    size = sum(s.bytes for s in m.shards)
    report({"out": str(out_dir), "client_id": m.producer.client_id, "examples": m.examples,
            "rows": m.rows, "encoding": m.encoding, "bytes": size,
            "bytes_per_row": size / max(m.rows, 1), **m.fidelity}, json_out, "bundle")


def _slice(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--slice must be I/N (for example 2/4), got {text!r}") from None
    return i, n


@app.command()
def aggregate(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folders to combine.")],
    out_dir: OutOpt,
    rule: Annotated[str, typer.Option(help="confidence, mean, entropy-reduction, weighted, "
                                           "coverage, median or trimmed-mean.")]
    = "confidence",
    confidence: Annotated[str, typer.Option(help="Confidence measure: max or neg_entropy.")]
    = "max",
    tau: Annotated[float, typer.Option(help="Softmax temperature over clients (confidence).")]
    = 1.0,
    era_temperature: Annotated[float, typer.Option(help="Sharpening temperature "
                                                        "(entropy-reduction).")] = 0.1,
    trim: Annotated[float, typer.Option(help="Share trimmed at each end (trimmed-mean).")]
    = 0.2,
    prior_correction: Annotated[bool, typer.Option(
        "--prior-correction/--no-prior-correction",
        help="coverage: divide each client's probabilities by its label prior first.")] = True,
    sharpen: Annotated[Optional[float], typer.Option(
        help="Classification: sharpen the result to softmax(p / T) at this temperature "
             "(DS-FL's entropy reduction, after any rule; 0.1 is DS-FL's).")] = None,
    k: Annotated[Optional[int], typer.Option(
        help="Token and embedding bundles: ids kept per row in the result (default: 16; "
             "embedding: as many as the input that kept most).")] = None,
    value_dtype: Annotated[str, typer.Option(help="Token bundles: int8 or fp16 values.")]
    = "int8",
    outlier_z: Annotated[float, typer.Option(
        help="Flag a client whose distance from the consensus has a robust z-score above "
             "this.")] = 2.0,
    trusted_keys: TrustedOpt = None, sign_key: SignOpt = None, limit: LimitOpt = None,
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Check bundles against each other and combine them per example into one teacher.

    Token bundles (causal-lm) are streamed and combined per token over the union of the
    clients' kept ids, then re-sparsified to [bold]--k[/bold] ids. The same bundle twice,
    one client voting twice on an example, and an [bold]--out[/bold] inside an input are
    refused. Prints each client's distance from the consensus (the median of all clients)
    and flags outliers, clients to look at; the teacher's provenance records the same.

    [bold]Example[/bold]: fd aggregate usb/a usb/b usb/c --rule median --trusted-keys keys/
    --out teacher
    """
    from .stages.aggregate import aggregate as run

    with reporting_errors():
        m = run(bundles, out_dir, rule=rule, confidence_measure=confidence, tau=tau,
                era_temperature=era_temperature, trim=trim,
                prior_correction=prior_correction, sharpen=sharpen, k=k, value_dtype=value_dtype,
                seed=seed, overwrite=overwrite, limits=opts.limits(limit),
                trusted_keys=opts.trusted(trusted_keys), sign_key=opts.sign_key(sign_key),
                outlier_z=outlier_z)
    clients = [{key: p.get(key) for key in ("path", "client_id", "signer", "examples",
                                            "distance_from_consensus", "agreement",
                                            "robust_z", "outlier")} for p in m.provenance]
    summary = {"out": str(out_dir), "rule": rule, "inputs": len(bundles), "task": m.task,
               "examples": m.examples, "rows": m.rows,
               "bytes": sum(s.bytes for s in m.shards),
               "outliers": [c["client_id"] for c in clients if c["outlier"]]}
    if json_out:
        print_json({**summary, "clients": clients})
        return
    report(summary, False, "aggregated bundle")
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


@app.command()
def distill(
    student: Annotated[Path, typer.Argument(help="Student model folder or config file.")],
    proxy: Annotated[Path, typer.Argument(help="The proxy dataset the bundle was made on.")],
    teacher: Annotated[Path, typer.Argument(help="The aggregated bundle.")],
    out_dir: OutOpt,
    temperature: Annotated[Optional[float], typer.Option(
        help="Distillation temperature T (default: 2; causal-lm: 1, or 2 for a top-k teacher "
             "whose mean tail mass is above 0.75, or a sampled teacher's own).")] = None,
    hard_weight: Annotated[Optional[float], typer.Option(
        help="Weight of cross-entropy on the proxy's labels, or for causal-lm on the proxy "
             "text's next tokens (default: 0, or 0.5 for causal-lm).")] = None,
    text_column: TextCol = None, image_column: ImageCol = None, label_column: LabelCol = None,
    tokenizer: TokenizerOpt = None, split: SplitOpt = None,
    epochs: Epochs = 3.0, lr: LR = 5e-5, batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size (default: 16, or 8 blocks for causal-lm).")] = None,
    task: TaskOpt = "classification",
    max_length: Annotated[Optional[int], typer.Option(
        help="causal-lm: tokens per block (default: the teacher bundle's).")] = None,
    source_column: SourceCol = None, target_column: TargetCol = None,
    bank: Annotated[Optional[str], typer.Option(
        help="embedding: how the student's own anchor embeddings are kept: epoch (re-embedded "
             "each epoch; default) or momentum (a momentum encoder re-embeds a batch of them "
             "each step).")] = None,
    pooling: PoolingOpt = None,
    trusted_keys: TrustedOpt = None, limit: LimitOpt = None, dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Train a student of any architecture on the proxy set against a teacher bundle. With
    [bold]--task causal-lm[/bold] the student is a causal LM that shares the teachers'
    tokenizer, trained per token with the sparse (tail-bucket) or sampled KD loss, mixed half
    and half with cross-entropy on the proxy text's next tokens. [bold]--task seq2seq[/bold]
    does the same for an encoder-decoder student, per target token of the proxy pairs.
    [bold]--task embedding[/bold] trains an encoder of any width so that its similarities to
    the bundle's anchors match the teachers' (temperature default 1: as emitted).

    [bold]Example[/bold]: fd distill student.json proxy.csv teacher/ --out student

    [bold]Example[/bold]: fd distill encoder.json proxy.csv relations/ --task embedding --out
    student
    """
    from .stages.distill import distill as run
    from .stages.embedding import distill_embedding
    from .stages.lm import distill_lm
    from .stages.seq2seq import distill_seq2seq

    with reporting_errors():
        opts.check_task(task)
        opts.seq2seq_only(task, max_length, source_column=source_column,
                          target_column=target_column)
        opts.embedding_only(task, bank=bank, pooling=pooling)
        if task == "embedding" and hard_weight is not None:
            raise ValueError("--hard-weight does not apply to --task embedding (a relational "
                             "student has no labels)")
        loss = {k: v for k, v in dict(temperature=temperature, hard_weight=hard_weight).items()
                if v is not None}
        loss.update(limits=opts.limits(limit), trusted_keys=opts.trusted(trusted_keys),
                    dtype=opts.dtype(dtype))
        common = dict(tokenizer=tokenizer, epochs=epochs, learning_rate=lr,
                      batch_size=batch_size or 8, split=split, seed=seed, overwrite=overwrite,
                      **loss)
        if task == "embedding":
            meta = distill_embedding(student, proxy, teacher, out_dir, bank=bank or "epoch",
                                     pooling=pooling, text_column=text_column,
                                     image_column=image_column,
                                     **{**common, "batch_size": batch_size or 16})
            report({"out": str(out_dir), "architecture": meta["architecture"],
                    "proxy_examples": meta["proxy_examples"], "anchors": meta["anchors"],
                    **meta["metrics"]}, json_out, "student")
            return
        if task == "seq2seq":
            meta = distill_seq2seq(student, proxy, teacher, out_dir,
                                   source_column=source_column, target_column=target_column,
                                   **common)
        elif task == "causal-lm":
            meta = distill_lm(student, proxy, teacher, out_dir, text_column=text_column,
                              max_length=max_length, **common)
        if task != "classification":
            report({"out": str(out_dir), "architecture": meta["architecture"],
                    "proxy_examples": meta["proxy_examples"],
                    "proxy_tokens": meta["proxy_tokens"], **meta["metrics"]}, json_out,
                   "student")
            return
        meta = run(student, proxy, teacher, out_dir, epochs=epochs, learning_rate=lr,
                   batch_size=batch_size or 16, seed=seed, text_column=text_column,
                   image_column=image_column, label_column=label_column, tokenizer=tokenizer,
                   split=split, overwrite=overwrite, **loss)
    report({"out": str(out_dir), "architecture": meta["architecture"],
            "proxy_examples": meta["proxy_examples"], **meta["metrics"]}, json_out, "student")


from . import cli_bundles, cli_data, cli_evaluate, cli_simulate  # noqa: E402,F401  (they add commands)


def main() -> None:
    """Console entry point (``fd``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    app()


if __name__ == "__main__":
    sys.exit(main())

