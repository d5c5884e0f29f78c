"""The ``fd`` command line: one thin command per stage over the library in :mod:`fdcli`.

Each command parses its options, calls one library function and prints the result. Any
:class:`~fdcli.errors.FdError` is printed to stderr and the command exits 1, without a
traceback. Heavy libraries are imported inside the command bodies.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import FdError, FdWarning

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
out = Console()
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
LimitOpt = Annotated[Optional[list[str]], typer.Option(
    "--limit", metavar="NAME=VALUE",
    help="Change a resource limit on reading bundles (repeatable): max_manifest_bytes (8MiB), "
         "max_json_depth (32), max_shard_bytes (1GiB), max_classes (1048576), "
         "max_dense_bytes (2GiB). See docs/bundle-format.md.")]
TrustedOpt = Annotated[Optional[Path], typer.Option(
    help="Folder of trusted public keys (NAME.pub, from fd keygen): refuse bundles that are "
         "unsigned, signed by another key, or altered after signing.")]
SignOpt = Annotated[Optional[Path], typer.Option(
    help="Private key (NAME.key, from fd keygen) to sign the bundle's manifest with.")]


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn an FdError (or a ValueError from a library parameter check) into a message on
    stderr and exit code 1, and print every FdWarning to stderr as ``warning: ...``."""
    import warnings

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, FdWarning):
                err.print(_WARNING + plain(str(message)), highlight=False, soft_wrap=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.simplefilter("always", FdWarning)
        warnings.showwarning = show
        try:
            yield
        except (FdError, ValueError) as exc:
            err.print(_ERROR + plain(str(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # permissions, a full disk, a vanished file: one line
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(_ERROR + plain(f"{where}{exc.strerror or exc}"), highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None


_ERROR = Text("error: ", style="bold red")
_WARNING = Text("warning: ", style="bold yellow")


def plain(message: str) -> Text:
    """A message as literal text: its strings may come from another institution's bundle, so
    rich markup in them is not interpreted and control characters (terminal escape sequences)
    are shown escaped, as ``\\x1b``."""
    return Text("".join(c if c == "\n" or c.isprintable() else ascii(c)[1:-1]
                        for c in message))


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"fd {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print fd's version and exit.")]
    = False,
) -> None:
    """fd: federated distillation for open foundation models."""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A bundle folder, or one shard file "
                                              "(shard-NNNNN.safetensors.zst).")],
    limit: LimitOpt = None, json_out: JsonOpt = False,
) -> None:
    """Describe a logit bundle, or a single shard, without trusting more than it must.

    For a bundle this reads only the manifest: task, encoding, label space, producer, sizes
    and fidelity. Use [bold]fd verify[/bold] to check every shard.

    [bold]Example[/bold]: fd inspect clients/hospital-a/bundle --json
    """
    from .bundle.inspect import describe

    with reporting_errors():
        info = describe(path, _limits(limit))
    if json_out:
        _print_json(info)
        return
    table = Table(title=plain(f"{info['kind']}: {path}"), show_header=False,
                  title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info["summary"].items():
        table.add_row(plain(str(key)), _human(value) if key.endswith("bytes") and isinstance(
            value, (int, float)) else plain(str(value)))
    out.print(table)


@app.command()
def verify(
    bundle_dir: Annotated[Path, typer.Argument(help="The bundle folder to check.")],
    trusted_keys: TrustedOpt = None, limit: LimitOpt = None, json_out: JsonOpt = False,
) -> None:
    """Check everything in a bundle: the manifest, its signature if it has one, every
    shard's size and sha256, bounded decompression, tensor shapes and dtypes, and the values
    themselves. With [bold]--trusted-keys[/bold] an unsigned bundle, or one signed by a key
    not in that folder, is refused.

    Exits 0 on a sound bundle and 1 otherwise, listing every problem found.

    [bold]Example[/bold]: fd verify usb-stick/hospital-a-bundle --trusted-keys keys/
    """
    from .bundle import verify_bundle

    with reporting_errors():
        report = verify_bundle(bundle_dir, _limits(limit), _trusted(trusted_keys))
    if json_out:
        _print_json({"path": str(bundle_dir), "ok": report.ok, "problems": report.problems,
                     "signer": report.signer, "shards_checked": report.shards_checked,
                     "rows_checked": report.rows_checked})
    elif report.ok:
        m = report.manifest
        signed = (f"signed by {report.signer}" + ("" if trusted_keys else
                                                  " (not checked against trusted keys)")
                  if report.signer else "unsigned")
        out.print(Text("OK ", style="green") + plain(
            f"{bundle_dir}: {report.shards_checked} shard(s), {report.rows_checked} rows, "
            f"{m.examples} examples, encoding {m.encoding['name']}, {signed}"), soft_wrap=True)
    else:
        problems = report.problems
        if len(problems) == 1:
            err.print(_ERROR + plain(problems[0]), highlight=False, soft_wrap=True)
        else:
            err.print(_ERROR + plain(f"{bundle_dir}: {len(problems)} problem(s) found:"),
                      highlight=False, soft_wrap=True)
            for p in problems:
                err.print(plain(f"  - {p}"), highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def keygen(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the key files.")],
    name: Annotated[str, typer.Option(help="Key name: writes NAME.key and NAME.pub.")] = "fd",
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Make an Ed25519 key pair for signing bundles: NAME.key stays with the institution
    (mode 0600); NAME.pub goes to the coordinator's [bold]--trusted-keys[/bold] folder.

    [bold]Example[/bold]: fd keygen --out keys --name hospital-a; then fd emit-logits ...
    --sign-key keys/hospital-a.key
    """
    from .bundle.signing import keygen as run

    with reporting_errors():
        result = run(out_dir, name, overwrite=overwrite)
    _report(result, json_out, "key pair")


# -- stages ------------------------------------------------------------------------------
DataOpt = Annotated[Path, typer.Argument(help="A local dataset: csv, json/jsonl, parquet, txt, "
                                              "an imagefolder or a save_to_disk folder.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not exist).")]
TextCol = Annotated[Optional[str], typer.Option(help="Text column (default: text, sentence, "
                                                     "content or document).")]
ImageCol = Annotated[Optional[str], typer.Option(help="Image column (default: image or img, or "
                                                      "any Image feature).")]
LabelCol = Annotated[Optional[str], typer.Option(help="Label column (default: label, labels, "
                                                      "target or class).")]
SplitOpt = Annotated[Optional[str], typer.Option(help="Split of a multi-split dataset folder.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed, recorded in the output.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Epochs = Annotated[float, typer.Option(help="Training epochs.")]
LR = Annotated[float, typer.Option("--lr", help="Learning rate.")]
Batch = Annotated[int, typer.Option(help="Batch size.")]
TokenizerOpt = Annotated[Optional[Path], typer.Option(
    help="Tokenizer folder, for text models built from a config file.")]
TaskOpt = Annotated[str, typer.Option(help="classification, or causal-lm for token-level "
                                           "distillation of language models.")]
MaxLen = Annotated[Optional[int], typer.Option(
    help="causal-lm: tokens per example block (default: the length fd trained the model "
         "with, else 128 or the model's positions if fewer).")]
Packing = Annotated[bool, typer.Option("--packing/--no-packing",
                                       help="causal-lm: pack documents into full blocks, or "
                                            "truncate each document.")]
TASKS = ("classification", "causal-lm")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"--task must be one of {list(TASKS)}, got {task!r}")


def _report(result: dict, json_out: bool, title: str, keys: list[str] | None = None) -> None:
    if json_out:
        _print_json(result)
        return
    table = Table(title=plain(title), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in keys or list(result):
        value = result.get(key)
        table.add_row(plain(key), plain(f"{value:.4f}" if isinstance(value, float)
                                        else str(value)))
    out.print(table)


def _print_json(value) -> None:
    """JSON on stdout, written as plain text (strings from bundles are JSON-escaped, never
    read as markup)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str, ensure_ascii=True) + "\n")


def _limits(items: list[str] | None):
    from .bundle.safeio import DEFAULT_LIMITS

    return DEFAULT_LIMITS.with_overrides(items)


def _trusted(folder: Path | None):
    from .bundle.signing import load_trusted_keys

    return None if folder is None else load_trusted_keys(folder)


def _sign_key(path: Path | None):
    from .bundle.signing import load_private_key

    return None if path is None else load_private_key(path)


@app.command("train-specialist")
def train_specialist_cmd(
    data: DataOpt,
    model: Annotated[Path, typer.Option(help="A model folder that from_pretrained reads, or a "
                                             "JSON/YAML config with a model_type.")],
    out_dir: OutOpt,
    client_id: Annotated[Optional[str], typer.Option(help="Institution name (default: the "
                                                          "output folder's name).")] = None,
    labels: Annotated[Optional[str], typer.Option(
        help="The federation's label names, comma-separated, in id order (default: read "
             "from the data).")] = None,
    text_column: TextCol = None, image_column: ImageCol = None, label_column: LabelCol = None,
    tokenizer: TokenizerOpt = None, split: SplitOpt = None,
    epochs: Epochs = 3.0, lr: LR = 5e-5, batch_size: Batch = 16,
    val_fraction: Annotated[float, typer.Option(help="Share held out for validation.")] = 0.0,
    task: TaskOpt = "classification", max_length: MaxLen = None, packing: Packing = True,
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
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Fine-tune a specialist on this institution's private data: labelled examples, or text
    for a causal language model ([bold]--task causal-lm[/bold]).

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
    from .stages.train_specialist import train_specialist

    with reporting_errors():
        _check_task(task)
        if task == "causal-lm":
            if teacher is not None or proxy is not None:
                raise ValueError("--teacher and --proxy (rounds) apply to --task "
                                 "classification")
            meta = train_lm_specialist(data, model, out_dir, tokenizer=tokenizer,
                                       client_id=client_id, text_column=text_column,
                                       split=split, max_length=max_length, packing=packing,
                                       epochs=epochs, learning_rate=lr, batch_size=batch_size,
                                       val_fraction=val_fraction, seed=seed,
                                       overwrite=overwrite)
            _report({"out": str(out_dir), "client_id": meta["client_id"],
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
                                temperature=temperature, seed=seed, overwrite=overwrite)
    extra = {"round": meta["round"], "consensus_sha256": meta["consensus"]["sha256"]} \
        if "round" in meta else {}
    _report({"out": str(out_dir), "client_id": meta["client_id"],
             "architecture": meta["architecture"], "train_examples": meta["train_examples"],
             **extra, **meta["metrics"]}, json_out, "specialist")


@app.command("emit-logits")
def emit_logits_cmd(
    model: Annotated[Path, typer.Argument(help="A trained model folder.")],
    proxy: Annotated[Path, typer.Argument(help="The shared proxy dataset.")],
    out_dir: OutOpt,
    encoding: Annotated[Optional[str], typer.Option(
        help="dense or topk; causal-lm also sample. Default: dense for classification; for "
             "causal-lm topk, or sample when --draws is given.")] = None,
    k: Annotated[Optional[int], typer.Option(help="Ids kept per row for topk (default: 16).")]
    = None,
    value_dtype: Annotated[str, typer.Option(help="topk values: int8 or fp16.")] = "int8",
    draws: Annotated[Optional[int], typer.Option(
        help="sample: ids drawn per token (default: 8).")] = None,
    sample_temperature: Annotated[float, typer.Option(
        help="sample: temperature the ids are drawn at (distill at the same one).")] = 1.0,
    client_id: Annotated[Optional[str], typer.Option(help="Institution name (default: from "
                                                          "the model's fd.json).")] = None,
    declare_label_counts: Annotated[bool, typer.Option(
        "--declare-label-counts", help="Write the model's training label counts into the "
        "manifest, for the coverage rule. This discloses the client's class mix.")] = False,
    proxy_slice: Annotated[Optional[str], typer.Option(
        "--slice", help="Emit only slice I of N contiguous slices of the proxy set, as I/N "
        "(a fresh slice each round; classification).")] = None,
    task: TaskOpt = "classification", max_length: MaxLen = None, packing: Packing = True,
    text_column: TextCol = None, image_column: ImageCol = None, tokenizer: TokenizerOpt = None,
    split: SplitOpt = None, batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size (default: 64, or 8 blocks for causal-lm).")] = None,
    sign_key: SignOpt = None,
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Run a model over the proxy dataset and write a logit bundle to carry out. With
    [bold]--task causal-lm[/bold] every token position is a row.

    [bold]Example[/bold]: fd emit-logits specialist/ proxy.csv --out usb/hospital-a-bundle
    """
    from .stages.emit import emit_logits
    from .stages.lm import LM_DRAWS, LM_ENCODING, emit_token_logits

    kept = 16 if k is None else k
    with reporting_errors():
        _check_task(task)
        key = _sign_key(sign_key)
        if task == "causal-lm":
            if declare_label_counts or proxy_slice:
                raise ValueError("--declare-label-counts and --slice apply to --task "
                                 "classification")
            encoding = encoding or ("sample" if draws is not None else LM_ENCODING)
            if (k is not None and encoding != "topk") or (draws is not None
                                                          and encoding != "sample"):
                raise ValueError(f"--{'k' if k is not None else 'draws'} does not apply to "
                                 f"--encoding {encoding}; --k is for topk, --draws for sample")
            m = emit_token_logits(model, proxy, out_dir, encoding=encoding,
                                  k=kept, value_dtype=value_dtype,
                                  draws=LM_DRAWS if draws is None else draws,
                                  sample_temperature=sample_temperature, tokenizer=tokenizer,
                                  client_id=client_id, text_column=text_column, split=split,
                                  max_length=max_length, packing=packing,
                                  batch_size=batch_size or 8, seed=seed, overwrite=overwrite,
                                  sign_key=key)
        else:
            if draws is not None:
                raise ValueError("--draws applies to --task causal-lm (--encoding sample)")
            m = emit_logits(model, proxy, out_dir, encoding=encoding or "dense", k=kept,
                            value_dtype=value_dtype, client_id=client_id,
                            declare_label_counts=declare_label_counts,
                            proxy_slice=_slice(proxy_slice),
                            text_column=text_column, image_column=image_column, split=split,
                            batch_size=batch_size or 64, seed=seed, overwrite=overwrite,
                            sign_key=key)
    size = sum(s.bytes for s in m.shards)
    _report({"out": str(out_dir), "client_id": m.producer.client_id, "examples": m.examples,
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
    k: Annotated[int, typer.Option(help="Token bundles: ids kept per row in the result.")] = 16,
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
                seed=seed, overwrite=overwrite, limits=_limits(limit),
                trusted_keys=_trusted(trusted_keys), sign_key=_sign_key(sign_key),
                outlier_z=outlier_z)
    clients = [{key: p.get(key) for key in ("path", "client_id", "signer", "examples",
                                            "distance_from_consensus", "agreement",
                                            "robust_z", "outlier")} for p in m.provenance]
    summary = {"out": str(out_dir), "rule": rule, "inputs": len(bundles), "task": m.task,
               "examples": m.examples, "rows": m.rows,
               "bytes": sum(s.bytes for s in m.shards),
               "outliers": [c["client_id"] for c in clients if c["outlier"]]}
    if json_out:
        _print_json({**summary, "clients": clients})
        return
    _report(summary, False, "aggregated bundle")
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
    trusted_keys: TrustedOpt = None, limit: LimitOpt = None,
    seed: SeedOpt = 0, overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Train a student of any architecture on the proxy set against a teacher bundle. With
    [bold]--task causal-lm[/bold] the student is a causal LM that shares the teachers'
    tokenizer, trained per token with the sparse (tail-bucket) or sampled KD loss, mixed half
    and half with cross-entropy on the proxy text's next tokens.

    [bold]Example[/bold]: fd distill student.json proxy.csv teacher/ --out student
    """
    from .stages.distill import distill as run
    from .stages.lm import distill_lm

    with reporting_errors():
        _check_task(task)
        loss = {k: v for k, v in dict(temperature=temperature, hard_weight=hard_weight).items()
                if v is not None}
        loss.update(limits=_limits(limit), trusted_keys=_trusted(trusted_keys))
        if task == "causal-lm":
            meta = distill_lm(student, proxy, teacher, out_dir, tokenizer=tokenizer,
                              epochs=epochs,
                              learning_rate=lr, batch_size=batch_size or 8,
                              text_column=text_column, split=split, max_length=max_length,
                              seed=seed, overwrite=overwrite, **loss)
            _report({"out": str(out_dir), "architecture": meta["architecture"],
                     "proxy_examples": meta["proxy_examples"],
                     "proxy_tokens": meta["proxy_tokens"], **meta["metrics"]}, json_out,
                    "student")
            return
        meta = run(student, proxy, teacher, out_dir, epochs=epochs, learning_rate=lr,
                   batch_size=batch_size or 16, seed=seed, text_column=text_column,
                   image_column=image_column, label_column=label_column, tokenizer=tokenizer,
                   split=split, overwrite=overwrite, **loss)
    _report({"out": str(out_dir), "architecture": meta["architecture"],
             "proxy_examples": meta["proxy_examples"], **meta["metrics"]}, json_out, "student")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A model folder.")],
    data: DataOpt,
    text_column: TextCol = None, image_column: ImageCol = None, label_column: LabelCol = None,
    split: SplitOpt = None, batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size (default: 64, or 8 blocks for causal-lm).")] = None,
    task: TaskOpt = "classification", max_length: MaxLen = None, packing: Packing = True,
    tokenizer: TokenizerOpt = None,
    mia: Annotated[bool, typer.Option("--mia", help="Also run membership-inference attacks "
                                                    "(needs --members and --nonmembers).")]
    = False,
    members: Annotated[Optional[Path], typer.Option(
        help="--mia: examples the model was trained on.")] = None,
    nonmembers: Annotated[Optional[Path], typer.Option(
        help="--mia: held-out examples from the same distribution.")] = None,
    reference: Annotated[Optional[list[Path]], typer.Option(
        help="--mia: a reference model trained without those examples (repeatable), for the "
             "reference attack.")] = None,
    match_labels: Annotated[bool, typer.Option(
        help="--mia: weight the non-members to the members' label mix (for members with "
             "skewed labels, such as one client's data).")] = False,
    teacher: Annotated[Optional[Path], typer.Option(
        help="causal-lm: a token bundle to measure the model's agreement with.")] = None,
    proxy: Annotated[Optional[Path], typer.Option(
        help="causal-lm: the proxy text the --teacher bundle was made on.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Accuracy, macro-F1, NLL and expected calibration error on labelled data (with
    [bold]--mia[/bold], membership-inference AUC and TPR at 1% and 0.1% FPR); with
    [bold]--task causal-lm[/bold], perplexity and next-token accuracy on held-out text (and
    top-1 match and KL against a teacher bundle, given [bold]--teacher[/bold] and
    [bold]--proxy[/bold]).

    [bold]Example[/bold]: fd evaluate student/ test.csv --json
    """
    from .stages.evaluate import evaluate as run
    from .stages.lm import evaluate_lm

    with reporting_errors():
        _check_task(task)
        if mia and (members is None or nonmembers is None):
            raise ValueError("--mia needs --members (training examples of the model) and "
                             "--nonmembers (held-out examples from the same distribution)")
        if mia and task != "classification":
            raise ValueError("--mia is implemented for --task classification")
        if task == "causal-lm":
            result = evaluate_lm(model, data, tokenizer=tokenizer, text_column=text_column,
                                 split=split, max_length=max_length, packing=packing,
                                 batch_size=batch_size or 8, teacher=teacher, proxy=proxy)
            agreement = result.pop("teacher_agreement", None)
            if agreement:
                result.update({f"teacher_{k}": v for k, v in agreement.items()})
            _report(result, json_out, "evaluation")
            return
        result = run(model, data, text_column=text_column, image_column=image_column,
                     label_column=label_column, split=split, batch_size=batch_size or 64)
        keys = ["model", "accuracy", "macro_f1", "nll", "ece", "examples", "architecture"]
        if mia:
            from .stages.evaluate import membership_inference

            attacks = membership_inference(model, members, nonmembers,
                                           references=reference or [],
                                           match_labels=match_labels,
                                           text_column=text_column,
                                           image_column=image_column,
                                           label_column=label_column,
                                           batch_size=batch_size or 64)
            for name in ("loss_threshold", "reference"):
                for key, value in attacks.get(name, {}).items():
                    if key != "references":
                        result[f"mia_{name}_{key}"] = value
                        keys.append(f"mia_{name}_{key}")
    _report(result, json_out, "evaluation", keys)


@app.command()
def partition(
    data: DataOpt,
    out_dir: OutOpt,
    num_clients: Annotated[int, typer.Option(help="Number of clients.")] = 5,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (0.1: very skewed, "
                                              "1.0: mild).")] = 1.0,
    proxy_fraction: Annotated[float, typer.Option(help="Share cut out as the proxy set.")] = 0.2,
    test_fraction: Annotated[float, typer.Option(help="Share cut out as the global test set.")]
    = 0.2,
    text_column: TextCol = None, image_column: ImageCol = None, label_column: LabelCol = None,
    split: SplitOpt = None, seed: SeedOpt = 0, overwrite: Overwrite = False,
    json_out: JsonOpt = False,
) -> None:
    """Split a labelled dataset into a test split, a proxy split and Dirichlet client splits.

    [bold]Example[/bold]: fd partition data.csv --num-clients 5 --alpha 0.1 --out parts
    """
    from .stages.partition import partition as run

    with reporting_errors():
        report = run(data, out_dir, num_clients=num_clients, alpha=alpha,
                     proxy_fraction=proxy_fraction, test_fraction=test_fraction,
                     text_column=text_column, image_column=image_column,
                     label_column=label_column, split=split, seed=seed, overwrite=overwrite)
    _report({"out": str(out_dir), **report["sizes"]}, json_out, "partition")


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "fd-simulation"),
    task: TaskOpt = "classification",
    data: Annotated[Optional[Path], typer.Option(help="A labelled image or text dataset (default: "
                                                      "scikit-learn's digits).")] = None,
    num_clients: Annotated[Optional[int], typer.Option(
        help="Number of institutions (default: 5, or 4 for causal-lm).")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of the label split.")]
    = 1.0,
    proxy_fraction: Annotated[float, typer.Option(help="Share of the data that becomes the "
                                                       "shared proxy set.")] = 0.2,
    rule: Annotated[Optional[str], typer.Option(
        help="Aggregation rule (default: coverage, whose bundles declare their label counts; "
             "confidence for causal-lm).")] = None,
    compare_rules: Annotated[Optional[str], typer.Option(
        help="Other rules to distill a student with from the last round's bundles, "
             "comma-separated, '' for none (default: none; mean for causal-lm).")] = None,
    architectures: Annotated[Optional[str], typer.Option(
        help="Specialist architectures, assigned in turn (default: vit,resnet; gpt2,llama "
             "for causal-lm).")] = None,
    student: Annotated[Optional[str], typer.Option(
        help="Student architecture (default: resnet; gpt2 for causal-lm).")] = None,
    epochs: Annotated[Optional[float], typer.Option(
        help="Specialist epochs (default: 60; 2 for causal-lm).")] = None,
    distill_epochs: Annotated[Optional[float], typer.Option(
        help="Distillation epochs (default: 100; 2 for causal-lm).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: 2e-3).")]
    = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size (default: 32; 16 blocks for causal-lm).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        help="Distillation temperature (default: 2; causal-lm: as fd distill picks).")] = None,
    max_length: Annotated[int, typer.Option(help="causal-lm: tokens per block.")] = 64,
    hard_weight: Annotated[Optional[float], typer.Option(
        help="causal-lm: share of next-token cross-entropy on the proxy in the student's "
             "loss (default 0.5).")] = None,
    k: Annotated[int, typer.Option(help="causal-lm: ids kept per token in the bundles.")] = 16,
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
    fedavg_rounds: Annotated[int, typer.Option(help="FedAvg rounds.")] = 20,
    fedavg_local_epochs: Annotated[float, typer.Option(
        help="FedAvg local epochs per round.")] = 3.0,
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
    standard-library packages and train small GPT-2 and Llama models. Neither needs a download.

    [bold]Example[/bold]: fd simulate --alpha 0.1 --out sim-alpha0.1
    """
    from .stages.simulate import simulate as run
    from .stages.simulate_lm import simulate_lm

    def log(message: str) -> None:
        err.print(Text("fd simulate: ", style="dim") + plain(message), highlight=False)

    given = {key: value for key, value in dict(
        num_clients=num_clients, epochs=epochs, distill_epochs=distill_epochs,
        learning_rate=lr, batch_size=batch_size, temperature=temperature,
        hard_weight=hard_weight, rounds=rounds, round_epochs=round_epochs,
        round_distill_epochs=round_distill_epochs, digest_weight=digest_weight,
        schedule=schedule, proxy_slices=proxy_slices, sharpen=sharpen, poison=poison,
        poison_kind=poison_kind).items()
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
        _check_task(task)
        if task == "causal-lm":
            rounds_given = sorted({"rounds", "round_epochs", "round_distill_epochs",
                                   "digest_weight", "schedule", "from_student",
                                   "proxy_slices", "sharpen", "poison", "poison_kind"}
                                  & set(given))
            if rounds_given:
                raise ValueError(f"{', '.join('--' + o.replace('_', '-') for o in rounds_given)}"
                                 " apply to classification; --task causal-lm is one-shot "
                                 "and unpoisoned")
            results = simulate_lm(out_dir, max_length=max_length, k=k, client_chars=client_chars,
                                  proxy_chars=proxy_chars, test_chars=min(40_000, client_chars),
                                  seed=seed, overwrite=overwrite, progress=False, log=log,
                                  **given)
        else:
            if "hard_weight" in given:
                raise ValueError("--hard-weight applies to --task causal-lm here")
            results = run(out_dir, data=data, alpha=alpha, proxy_fraction=proxy_fraction,
                          baselines=[b for b in baselines.split(",") if b],
                          fedavg_rounds=fedavg_rounds, fedavg_local_epochs=fedavg_local_epochs,
                          fedavg_fraction=fedavg_fraction, target_fraction=target_fraction,
                          privacy=privacy, seed=seed, overwrite=overwrite, progress=False,
                          log=log, **given)
    if json_out:
        _print_json(results)
        return
    if task == "causal-lm":
        _lm_table(results, out_dir)
        return
    n_rounds = len(results["rounds"])
    table = Table(title=plain(f"fd simulate: {len(results['specialists'])} clients, "
                              f"alpha={alpha}, {n_rounds} round(s) ({out_dir}/results.json)"),
                  title_justify="left")
    for col in ("model", "architecture", "accuracy", "macro-F1", "sent (up + down)"):
        table.add_column(col)
    for s in results["specialists"]:
        table.add_row(f"specialist {s['client_id']}", s["architecture"], f"{s['accuracy']:.3f}",
                      f"{s['macro_f1']:.3f}", _human(s["uploaded_bytes"]) + " (last round up)")
    for name, s in results["students_by_rule"].items():
        sent = results["bytes"]["fd"]["total"] if name == results["config"]["rule"] else None
        table.add_row(f"student ({name})", s["architecture"], f"{s['accuracy']:.3f}",
                      f"{s['macro_f1']:.3f}", _human(sent) if sent else "")
    for name, b in results["baselines"].items():
        sent = results["bytes"].get(name, {}).get("total")
        arch = "each alone (mean)" if name == "standalone" else results["student"]["architecture"]
        table.add_row(name, arch, f"{b['accuracy']:.3f}", f"{b['macro_f1']:.3f}",
                      _human(sent) if sent else "")
    out.print(table)
    if results["poisoned_clients"]:
        out.print(plain(f"poisoned ({results['config']['poison_kind']}): "
                        f"{', '.join(results['poisoned_clients'])}; flagged as outliers by "
                        f"the aggregate: {', '.join(results['outliers_flagged']) or 'none'}"))
    hits = results["bytes_to_target"]
    if hits:
        reached = {k: _human(v["bytes"]) if v["reached"] else "not reached"
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
        row(f"specialist {s['client_id']} ({s['domain']})", s, _human(s["uploaded_bytes"]))
    for name, s in results["students_by_rule"].items():
        row(f"student ({name})", s)
    row("proxy only (no teachers)", results["proxy_only"])
    row("centralized", results["centralized"])
    out.print(table)


def main() -> None:
    """Console entry point (``fd``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    app()


if __name__ == "__main__":
    sys.exit(main())
