"""The options the ``fd`` commands share, and the helpers that turn them into library
arguments (imported lazily: ``fd --help`` loads no torch). Which task takes an option, and
its default, is declared in :mod:`fdcli.tasks`; the help says so (:func:`.dispatch.task_help`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..tasks import TASKS

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
LimitOpt = Annotated[Optional[list[str]], typer.Option(
    "--limit", metavar="NAME=VALUE",
    help="Change a resource limit on reading bundles (repeatable): max_manifest_bytes (8MiB), "
         "max_json_depth (32), max_string_chars (4096), max_shard_bytes (1GiB), max_classes "
         "(1048576), max_dense_bytes (2GiB), max_held_bytes (512MiB). See "
         "docs/bundle-format.md.")]
TrustedOpt = Annotated[Optional[Path], typer.Option(
    help="Folder of trusted public keys (NAME.pub, from fd keygen): refuse bundles that are "
         "unsigned, signed by another key, or altered after signing.")]
SignOpt = Annotated[Optional[Path], typer.Option(
    help="Private key (NAME.key, from fd keygen) to sign the bundle with: OpenSSF Model "
         "Signing (model.sig) with an ECDSA key; fd's older signature.json with Ed25519.")]


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
Batch = Annotated[int, typer.Option(help="Batch size.")]
TokenizerOpt = Annotated[Optional[Path], typer.Option(
    help="Tokenizer folder, for text models built from a config file.")]
TaskOpt = Annotated[Optional[str], typer.Option(
    help=", ".join(TASKS) + ". Default: what the model's fd.json or config, or the bundle's "
         "manifest, says; else classification.")]
SourceCol = Annotated[Optional[str], typer.Option(
    help="seq2seq: source text column (default: source, input, inputs, src, document, "
         "question, prompt or text).")]
MaxSrc = Annotated[Optional[int], typer.Option(
    help="seq2seq: source tokens kept (default: the model's or bundle's, else 256).")]
DtypeOpt = Annotated[str, typer.Option(
    help="Model precision: auto (bf16 on a GPU that supports it, else fp32), bf16, fp16 "
         "(GPU only) or fp32. Training uses mixed precision and saves fp32 weights; emitted "
         "logits are encoded in fp32.")]


def dtype(name: str) -> str:
    """``--dtype``, checked against this machine now rather than after loading the data."""
    from ..devices import resolve_dtype

    resolve_dtype(name)
    return name


def limits(items: list[str] | None):
    from ..bundle.safeio import DEFAULT_LIMITS

    return DEFAULT_LIMITS.with_overrides(items)


def trusted(folder: Path | None):
    from ..bundle.signing import load_trusted_keys

    return None if folder is None else load_trusted_keys(folder)


def sign_key(path: Path | None):
    from ..bundle.signing import load_private_key

    return None if path is None else load_private_key(path)




def proxy_slice(text: str | None) -> tuple[int, int] | None:
    """``--slice I/N``."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--slice must be I/N (for example 2/4), got {text!r}") from None
    return i, n


def sharpening(value: float | None) -> float | None:
    """``--sharpen``: 0 means none."""
    return None if value == 0 else value


def numbers(flag: str):
    """A comma-separated list of numbers (``--fedavg-tune-lrs 5e-4,2e-3``)."""
    def convert(text):
        if text is None or not isinstance(text, str):
            return text
        try:
            return [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{flag} must be numbers separated by commas (for example "
                             f"5e-4,2e-3), got {text!r}") from None
    return convert
