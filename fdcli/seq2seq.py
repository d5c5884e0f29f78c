"""Encoder-decoder (sequence-to-sequence) models for token-level distillation: loading, text
pairs, teacher-forced logits, greedy generation and the text metrics.

A model source is a folder that ``AutoModelForSeq2SeqLM.from_pretrained`` reads (T5/FLAN-T5,
BART, Marian, ...; its tokenizer beside it, or one given with ``tokenizer``), or a JSON/YAML
config with a ``model_type`` for random initialisation. Nothing is fetched from a hub.

Data is pairs of a source text and a target text. Every target token is a row: row j of an
example is the decoder's distribution at position j, teacher-forced on the target's first j
tokens, the prediction of target token j. Targets end with the tokenizer's end-of-sequence
token (appended when the tokenizer does not add it), so a student also learns when to stop.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from .data import DataError, pick_column
from .lm import LanguageModel, load_text_model, masked_rows, to_device, vocab_fingerprint
from .models import ModelError

SOURCE_COLUMNS = ("source", "input", "inputs", "src", "document", "question", "prompt", "text")
TARGET_COLUMNS = ("target", "output", "targets", "tgt", "summary", "answer", "completion")
DEFAULT_SOURCE_LENGTH = 256
DEFAULT_TARGET_LENGTH = 64


def load_seq2seq(source: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                 seed: int = 0, **kwargs) -> LanguageModel:
    """Load an encoder-decoder model from a model folder, an adapter folder, a GGUF file or a
    config file, with its tokenizer (``kwargs``: :func:`~fdcli.lm.load_text_model`'s).
    A config file's decoder starts from the padding id unless it says otherwise (T5's and
    Marian's convention; an architecture's own default may lie outside a local vocabulary)."""
    from transformers import AutoModelForSeq2SeqLM

    m = load_text_model(source, AutoModelForSeq2SeqLM, "sequence-to-sequence model",
                        tokenizer=tokenizer, seed=seed,
                        config_defaults={"decoder_start_token_id": "pad_token_id"}, **kwargs)
    if start_id(m) is None:
        raise ModelError(f"{source}: the model has no decoder_start_token_id and its tokenizer "
                        "no padding token; expected one of them to start decoding from")
    return m


def start_id(m: LanguageModel) -> int | None:
    cfg = m.model.config
    for value in (cfg.decoder_start_token_id, getattr(m.model.generation_config,
                                                      "decoder_start_token_id", None),
                  m.tokenizer.pad_token_id):
        if isinstance(value, int):
            return value
    return None


def pad_id(m: LanguageModel) -> int:
    pad = m.tokenizer.pad_token_id
    return pad if pad is not None else 0


@dataclass
class TextPairs:
    """Token ids of every example's source and target (None for a proxy without targets),
    with the raw texts and what made them."""

    sources: list[list[int]]
    targets: list[list[int]] | None
    source_texts: list[str]
    target_texts: list[str] | None
    source_column: str
    target_column: str | None
    max_source_length: int
    max_target_length: int
    fingerprint: str

    @property
    def rows(self) -> int:
        return sum(len(t) for t in self.targets or [])

    def describe(self) -> str:
        return (f"--max-source-length {self.max_source_length}, --max-target-length "
                f"{self.max_target_length}, columns {self.source_column!r}/"
                f"{self.target_column!r}")


def _texts(ds, column: str, where: str) -> list[str]:
    values = list(ds[column])
    bad = next((i for i, v in enumerate(values) if v is None), None)
    if bad is not None:
        raise DataError(f"{where}: row {bad} has no {column!r} value; expected text in every "
                        "row")
    return [str(v) for v in values]


def text_pairs(ds, where: str, tokenizer, *, source_column: str | None = None,
               target_column: str | None = None, need_targets: bool = True,
               max_source_length: int = DEFAULT_SOURCE_LENGTH,
               max_target_length: int = DEFAULT_TARGET_LENGTH) -> TextPairs:
    """Tokenize a dataset's source and target columns (targets truncated, then ended with
    the end-of-sequence token). Without a target column, ``need_targets`` False gives sources
    only (for :func:`generate`). The fingerprint covers the vocabulary and every id."""
    for name, value in (("max_source_length", max_source_length),
                        ("max_target_length", max_target_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    columns = list(ds.column_names)
    src = pick_column(columns, source_column, SOURCE_COLUMNS, "source", where, "--source-column")
    tgt = pick_column(columns, target_column, [c for c in TARGET_COLUMNS if c != src], "target",
                where, "--target-column")
    if src is None:
        raise DataError(f"{where}: no source column found; expected one of "
                        f"{list(SOURCE_COLUMNS)}, found {columns}; set --source-column")
    if tgt is None and need_targets:
        raise DataError(f"{where}: no target column found; expected one of "
                        f"{list(TARGET_COLUMNS)}, found {columns}; set --target-column, or "
                        "write targets for a proxy set that has none with fd generate")
    if len(ds) == 0:
        raise DataError(f"{where}: no examples; expected source/target pairs")
    source_texts = _texts(ds, src, where)
    sources = tokenizer(source_texts, truncation=True, max_length=max_source_length,
                        verbose=False)["input_ids"]
    targets = target_texts = None
    if tgt is not None:
        target_texts = _texts(ds, tgt, where)
        eos = tokenizer.eos_token_id
        targets = []
        for ids in tokenizer(text_target=target_texts, truncation=True,
                             max_length=max_target_length, verbose=False)["input_ids"]:
            if eos is not None and (not ids or ids[-1] != eos):
                ids = ids[:max_target_length - 1] + [eos]
            if not ids:
                raise DataError(f"{where}: a target tokenizes to nothing and the tokenizer "
                                "has no end-of-sequence token; expected one of them")
            targets.append(ids)
    digest = hashlib.sha256(f"seq2seq:{vocab_fingerprint(tokenizer)}:{len(sources)}:"
                            f"{targets is not None}".encode())
    for ids in [*sources, *(targets or [])]:
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
    return TextPairs(sources, targets, source_texts, target_texts, src, tgt,
                     max_source_length, max_target_length, "sha256:" + digest.hexdigest())


def pad_right(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Id sequences as ``[B, L]`` ids padded on the right with ``pad``, and their mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def pad_pairs(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad: int,
              start: int) -> dict[str, torch.Tensor]:
    """Encoder inputs, teacher-forced decoder inputs (the start id, then the target shifted
    right) and ``next_ids``: the target token each decoder position predicts (-100 at
    padding). Right padding throughout."""
    ids, mask = pad_right(sources, pad)
    twidth = max(len(t) for t in targets)
    dec = torch.full((len(targets), twidth), pad, dtype=torch.long)
    dmask = torch.zeros((len(targets), twidth), dtype=torch.long)
    nxt = torch.full((len(targets), twidth), -100, dtype=torch.long)
    for i, t in enumerate(targets):
        t = torch.tensor(t, dtype=torch.long)
        dec[i, 0] = start
        dec[i, 1:len(t)] = t[:-1]
        dmask[i, :len(t)] = 1
        nxt[i, :len(t)] = t
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
            "decoder_attention_mask": dmask, "next_ids": nxt}


@torch.no_grad()
def iter_pair_logits(m: LanguageModel, sources: Sequence[Sequence[int]],
                     targets: Sequence[Sequence[int]], batch_size: int = 8,
                     ) -> Iterator[tuple[range, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each batch of pairs: their indices, the decoder's logits at every target token
    ``[rows, V]`` (on the model's device, in its dtype), the rows per pair, and the target
    ids of those rows."""
    m.model.eval()
    device = next(m.model.parameters()).device
    pad, start = pad_id(m), start_id(m)
    for lo in range(0, len(sources), batch_size):
        batch = pad_pairs(sources[lo:lo + batch_size], targets[lo:lo + batch_size], pad, start)
        dmask = batch["decoder_attention_mask"].bool()
        moved = to_device({k: v for k, v in batch.items() if k != "next_ids"}, device)
        logits = m.model(**moved, use_cache=False).logits[..., :m.vocab_size]
        yield (range(lo, lo + len(batch["input_ids"])), masked_rows(logits, dmask),
               dmask.sum(1),
               batch["next_ids"][dmask])


@torch.no_grad()
def generate(m: LanguageModel, sources: Sequence[Sequence[int]], *, batch_size: int = 16,
             max_new_tokens: int = DEFAULT_TARGET_LENGTH) -> list[str]:
    """Greedy decodes of ``sources`` (no sampling, one beam), as text without special
    tokens."""
    m.model.eval()
    device = next(m.model.parameters()).device
    pad, out = pad_id(m), []
    for lo in range(0, len(sources), batch_size):
        ids, mask = pad_right(sources[lo:lo + batch_size], pad)
        ids = m.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                               max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,
                               decoder_start_token_id=start_id(m), pad_token_id=pad,
                               eos_token_id=m.tokenizer.eos_token_id)
        out += [t.strip() for t in m.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return out


def _words(text: str) -> list[str]:
    """ROUGE's tokens: lower-cased runs of letters and digits (rouge-score's default)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 of one pair: the longest common subsequence of words over both lengths."""
    h, r = _words(hypothesis), _words(reference)
    if not h or not r:
        return float(h == r)
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(h), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def text_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, its default settings) and mean sentence ROUGE-L F1
    (x100, like sacrebleu's scores) of generated texts against one reference each."""
    import sacrebleu

    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"expected one hypothesis per reference, got {len(hypotheses)} and "
                         f"{len(references)}")
    refs = [list(references)]
    return {"bleu": sacrebleu.corpus_bleu(list(hypotheses), refs).score,
            "chrf": sacrebleu.corpus_chrf(list(hypotheses), refs).score,
            "rouge_l": 100 * sum(map(rouge_l, hypotheses, references)) / len(references)}


def token_nll(m: LanguageModel, pairs: TextPairs, batch_size: int = 8,
              per_example: bool = False) -> dict[str, Any]:
    """Teacher-forced NLL (nats per target token), perplexity and token accuracy; with
    ``per_example``, also each pair's mean NLL (``losses``, for membership inference)."""
    nll, hits, count, losses = 0.0, 0, 0, []
    for _, logits, counts, nxt in iter_pair_logits(m, pairs.sources, pairs.targets, batch_size):
        nxt = nxt.to(logits.device)
        each = torch.nn.functional.cross_entropy(logits.float(), nxt, reduction="none")
        nll += float(each.sum())
        hits += int((logits.argmax(-1) == nxt).sum())
        count += len(nxt)
        if per_example:
            losses += [float(x.mean()) for x in each.cpu().split(counts.tolist())]
    result: dict[str, Any] = {"nll": nll / count, "perplexity": float(torch.tensor(nll / count)
                                                                      .exp()),
                              "token_accuracy": hits / count, "tokens": count}
    if per_example:
        result["losses"] = losses
    return result


def train_seq2seq_tokenizer(texts: Sequence[str], out: str | os.PathLike,
                            vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer for encoder-decoder models on ``texts`` and save it as
    a normal tokenizer folder, with T5's special ids: ``<pad>`` 0 (also the decoder's start),
    ``</s>`` 1 (appended to every encoded text) and ``<unk>`` 2."""
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    out = Path(out)
    fast.save_pretrained(str(out))
    return out
