"""``fd evaluate``: task quality of a model (classification, causal-lm, seq2seq, embedding)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import cli_options as opts
from .cli import app
from .cli_options import (DataOpt, DtypeOpt, ImageCol, JsonOpt, LabelCol, MaxLen, MaxSrc,
                          MaxTgt, Packing, PoolingOpt, SeedOpt, SourceCol, SplitOpt, TargetCol,
                          TaskOpt, TextCol, TokenizerOpt)
from .console import report, reporting_errors


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A model folder.")],
    data: DataOpt,
    text_column: TextCol = None, image_column: ImageCol = None, label_column: LabelCol = None,
    split: SplitOpt = None, batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size (default: 64, or 8 blocks for causal-lm).")] = None,
    task: TaskOpt = "classification", max_length: MaxLen = None, packing: Packing = True,
    source_column: SourceCol = None, target_column: TargetCol = None,
    max_source_length: MaxSrc = None, max_target_length: MaxTgt = None,
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
        help="causal-lm: a token bundle to measure the model's agreement with; embedding: "
             "another model whose nearest-neighbour sets to compare with.")] = None,
    proxy: Annotated[Optional[Path], typer.Option(
        help="causal-lm: the proxy text the --teacher bundle was made on.")] = None,
    probe_train: Annotated[Optional[Path], typer.Option(
        help="embedding: labelled data to fit the linear probe and k-NN on (default: "
             "5-fold cross-validation on DATA).")] = None,
    pooling: PoolingOpt = None,
    knn: Annotated[Optional[int], typer.Option(
        help="embedding: neighbours that vote in k-NN (default: 5).")] = None,
    neighbours: Annotated[Optional[int], typer.Option(
        help="embedding: size of the neighbour sets compared with --teacher (default: "
             "10).")] = None,
    dtype: DtypeOpt = "auto", seed: SeedOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Accuracy, macro-F1, NLL and expected calibration error on labelled data (with
    [bold]--mia[/bold], membership-inference AUC and TPR at 1% and 0.1% FPR); with
    [bold]--task causal-lm[/bold], perplexity and next-token accuracy on held-out text (and
    top-1 match and KL against a teacher bundle, given [bold]--teacher[/bold] and
    [bold]--proxy[/bold]); with [bold]--task seq2seq[/bold], BLEU, chrF and ROUGE-L of greedy
    decodes against the targets, and the targets' NLL per token; with [bold]--task
    embedding[/bold], linear-probe and k-NN accuracy of the model's embeddings (scikit-learn),
    and with [bold]--teacher[/bold] another model, how far their neighbour sets agree.

    [bold]Example[/bold]: fd evaluate student/ test.csv --json

    [bold]Example[/bold]: fd evaluate student/ test.csv --task embedding --probe-train
    proxy-labels.csv --teacher specialist/
    """
    from .stages.embedding import evaluate_embedding
    from .stages.evaluate import evaluate as run
    from .stages.lm import evaluate_lm
    from .stages.seq2seq import evaluate_seq2seq

    with reporting_errors():
        opts.check_task(task)
        opts.seq2seq_only(task, max_length, source_column=source_column,
                          target_column=target_column, max_source_length=max_source_length,
                          max_target_length=max_target_length)
        if mia and (members is None or nonmembers is None):
            raise ValueError("--mia needs --members (training examples of the model) and "
                             "--nonmembers (held-out examples from the same distribution)")
        opts.embedding_only(task, probe_train=probe_train, pooling=pooling, knn=knn,
                            neighbours=neighbours)
        if mia and task != "classification":
            raise ValueError("--mia is implemented for --task classification")
        dtype = opts.dtype(dtype)
        if task == "embedding":
            if proxy is not None:
                raise ValueError("--proxy applies to --task causal-lm")
            report(evaluate_embedding(model, data, probe_train=probe_train, teacher=teacher,
                                      pooling=pooling, knn=knn or 5,
                                      neighbours=neighbours or 10, text_column=text_column,
                                      image_column=image_column, label_column=label_column,
                                      tokenizer=tokenizer, split=split,
                                      batch_size=batch_size or 64, dtype=dtype, seed=seed),
                   json_out, "evaluation")
            return
        if task == "seq2seq":
            if teacher is not None or proxy is not None:
                raise ValueError("--teacher and --proxy apply to --task causal-lm")
            report(evaluate_seq2seq(model, data, tokenizer=tokenizer,
                                    source_column=source_column, target_column=target_column,
                                    split=split, max_source_length=max_source_length,
                                    max_target_length=max_target_length,
                                    batch_size=batch_size or 8, dtype=dtype),
                   json_out, "evaluation")
            return
        if task == "causal-lm":
            result = evaluate_lm(model, data, tokenizer=tokenizer, text_column=text_column,
                                 split=split, max_length=max_length, packing=packing,
                                 batch_size=batch_size or 8, teacher=teacher, proxy=proxy,
                                 dtype=dtype)
            agreement = result.pop("teacher_agreement", None)
            if agreement:
                result.update({f"teacher_{k}": v for k, v in agreement.items()})
            report(result, json_out, "evaluation")
            return
        result = run(model, data, text_column=text_column, image_column=image_column,
                     label_column=label_column, split=split, batch_size=batch_size or 64,
                     dtype=dtype)
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
    report(result, json_out, "evaluation", keys)
