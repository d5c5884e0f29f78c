"""``fd partition`` and ``fd generate``: the commands that prepare data rather than models or
bundles (added to :data:`fdcli.cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import options as opts
from . import app
from .options import (DataOpt, DtypeOpt, ImageCol, JsonOpt, LabelCol, MaxSrc, MaxTgt, OutOpt,
                          Overwrite, SeedOpt, SourceCol, SplitOpt, TextCol, TokenizerOpt)
from ..console import report, reporting_errors


@app.command(short_help="Split labelled data into test, proxy and client splits.")
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
    from ..stages.partition import partition as run

    with reporting_errors():
        made = run(data, out_dir, num_clients=num_clients, alpha=alpha,
                   proxy_fraction=proxy_fraction, test_fraction=test_fraction,
                   text_column=text_column, image_column=image_column,
                   label_column=label_column, split=split, seed=seed, overwrite=overwrite)
    report({"out": str(out_dir), **made["sizes"]}, json_out, "partition")


@app.command(short_help="Write targets for a seq2seq proxy set: the model's decode.")
def generate(
    model: Annotated[Path, typer.Argument(help="A sequence-to-sequence model folder: a "
                                               "teacher's, or a pretrained student's.")],
    proxy: Annotated[Path, typer.Argument(help="The proxy dataset (sources, no targets).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The .jsonl file to write "
                                                               "(source and target).")],
    source_column: SourceCol = None, split: SplitOpt = None,
    max_source_length: MaxSrc = None, max_target_length: MaxTgt = None,
    tokenizer: TokenizerOpt = None,
    batch_size: Annotated[int, typer.Option(help="Sources decoded at once.")] = 16,
    dtype: DtypeOpt = "auto", overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Write targets for a seq2seq proxy set that has none: the model's greedy decode of
    every source. Share the file as the proxy set; every teacher then emits teacher-forced on
    the same targets (fd emit-logits --task seq2seq) and the student is distilled on them.

    [bold]Example[/bold]: fd generate teacher-a/ proxy-sources.csv --out proxy.jsonl
    """
    from ..stages.seq2seq import generate_targets

    with reporting_errors():
        result = generate_targets(model, proxy, out_file, tokenizer=tokenizer,
                                  source_column=source_column, split=split,
                                  max_source_length=max_source_length,
                                  max_target_length=max_target_length, batch_size=batch_size,
                                  overwrite=overwrite, dtype=opts.dtype(dtype))
    report(result, json_out, "targets")
