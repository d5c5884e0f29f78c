"""``fd partition`` and ``fd generate``: the commands that prepare data rather than models or
bundles (added to :data:`fdcli.cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as opts
from . import app
from .options import (DataOpt, DtypeOpt, ImageCol, JsonOpt, LabelCol, MaxSrc, OutOpt,
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
    validation_fraction: Annotated[float, typer.Option(
        help="Share cut out as a labelled validation set for choosing settings (0 for "
             "none).")] = 0.1,
    text_column: TextCol = None, image_column: ImageCol = None, label_column: LabelCol = None,
    split: SplitOpt = None, seed: SeedOpt = 0, overwrite: Overwrite = False,
    json_out: JsonOpt = False,
) -> None:
    """Split a labelled dataset into test, proxy, validation and Dirichlet client splits.

    [bold]Example[/bold]: fd partition data.csv --num-clients 5 --alpha 0.1 --out parts
    """
    from ..stages.partition import partition as run

    with reporting_errors():
        made = run(data, out_dir, num_clients=num_clients, alpha=alpha,
                   proxy_fraction=proxy_fraction, test_fraction=test_fraction,
                   validation_fraction=validation_fraction, text_column=text_column,
                   image_column=image_column,
                   label_column=label_column, split=split, seed=seed, overwrite=overwrite)
    report({"out": str(out_dir), **made["sizes"]}, json_out, "partition")


@app.command(short_help="Write a proxy set's targets or responses from one model.")
def generate(
    model: Annotated[Path, typer.Argument(help="A seq2seq or causal-LM model folder (or GGUF "
                                               "file): a teacher's, or a pretrained "
                                               "student's.")],
    proxy: Annotated[Path, typer.Argument(help="The proxy dataset (sources or prompts, no "
                                               "targets or responses).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The .jsonl file to write.")],
    task: Annotated[Optional[str], typer.Option(
        help="seq2seq or causal-lm. Default: what the model's fd.json or config says, else "
             "seq2seq.")] = None,
    source_column: SourceCol = None,
    prompt_column: Annotated[Optional[str], typer.Option(
        help="causal-lm: the prompt column (default: prompt, instruction, question or input; "
             "else a messages column).")] = None,
    split: SplitOpt = None,
    max_source_length: MaxSrc = None,
    max_target_length: Annotated[Optional[int], typer.Option(
        help="Tokens generated per example at most (default: the model's or 64).")] = None,
    tokenizer: TokenizerOpt = None,
    batch_size: Annotated[int, typer.Option(help="Examples decoded at once.")] = 16,
    dtype: DtypeOpt = "auto", overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Write a proxy set's targets (seq2seq) or responses (causal-lm) from one model: its
    greedy decode of every source or prompt. Share the file as the proxy set; every teacher
    then emits teacher-forced on the same targets or responses and the student is distilled
    on them. causal-lm prompts are rendered with the tokenizer's chat template; the file has
    prompt and response columns (or messages, with the assistant's reply appended).

    [bold]Example[/bold]: fd generate teacher-a/ proxy-sources.csv --out proxy.jsonl

    [bold]Example[/bold]: fd generate specialist/ prompts.jsonl --out proxy-chats.jsonl
    """
    from ..errors import FdError
    from ..tasks import choose_task, task_of_model

    with reporting_errors():
        found = task_of_model(model)
        chosen = choose_task(task, found).name if task or found else "seq2seq"
        if chosen == "causal-lm":
            if source_column is not None or max_source_length is not None:
                raise FdError("fd generate: --source-column and --max-source-length are "
                              "seq2seq's; a causal LM reads --prompt-column")
            from ..stages.chat import generate_responses

            result = generate_responses(model, proxy, out_file, tokenizer=tokenizer,
                                        prompt_column=prompt_column, split=split,
                                        max_new_tokens=max_target_length,
                                        batch_size=batch_size, overwrite=overwrite,
                                        dtype=opts.dtype(dtype))
        elif chosen == "seq2seq":
            if prompt_column is not None:
                raise FdError("fd generate: --prompt-column is causal-lm's; a seq2seq model "
                              "reads --source-column")
            from ..stages.seq2seq import generate_targets

            result = generate_targets(model, proxy, out_file, tokenizer=tokenizer,
                                      source_column=source_column, split=split,
                                      max_source_length=max_source_length,
                                      max_target_length=max_target_length,
                                      batch_size=batch_size, overwrite=overwrite,
                                      dtype=opts.dtype(dtype))
        else:
            raise FdError(f"fd generate supports --task seq2seq and causal-lm, not {chosen}")
    report(result, json_out, "generated")
