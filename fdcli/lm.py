"""Causal language models for token-level distillation: loading, text blocks, fingerprints.

A model source is a folder that ``from_pretrained`` reads (its tokenizer beside it, or one
given with ``tokenizer``), or a JSON/YAML config with a ``model_type`` for random
initialisation (``vocab_size`` defaults to the tokenizer's size). Nothing is fetched from a hub.

Logits are cut to the tokenizer's size: ids past it are never real tokens, so two models that
share a tokenizer but pad their embedding matrices differently still agree on the vocabulary.

Text becomes **blocks** of token ids, one per example: documents are packed (joined with the
end-of-text token and cut every ``max_length`` tokens) or truncated to ``max_length``. Row j of
an example's teacher rows is the distribution at position j, the prediction of token j + 1.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .bundle.manifest import fingerprint_labels
from .data import TEXT_COLUMNS, DataError, pick_column
from .meta import read_fd_meta
from .models import ModelError, find_tokenizer, fingerprint_model, read_config_file

DEFAULT_LM_MAX_LENGTH = 128


@dataclass
class LanguageModel:
    """A causal LM with its tokenizer."""

    model: Any
    tokenizer: Any
    meta: dict[str, Any] = field(default_factory=dict)  # fd.json of a model fd trained
    #: the fingerprint of the weights as loaded, when known without hashing them (fd.json's,
    #: or a GGUF file's sha256)
    known_fingerprint: str | None = None
    #: the base model (path, fingerprint) of an adapter, fresh or loaded
    base: dict[str, str] | None = None

    def fingerprint(self) -> str:
        """The fingerprint of the weights as loaded (before any change of dtype)."""
        return self.known_fingerprint or fingerprint_model(self.model)

    @property
    def architecture(self) -> str:
        return self.model.config.model_type

    @property
    def vocab_size(self) -> int:
        """The tokenizer's size: the width of every logit row fd stores."""
        return len(self.tokenizer)


def _load_tokenizer(source: Path | None, tokenizer, where: str):
    tok = find_tokenizer(source, tokenizer, where)
    if tok is None:
        raise ModelError(f"{where}: no tokenizer found; put one beside the model or pass "
                         "--tokenizer DIR (a folder that AutoTokenizer.from_pretrained reads)")
    return tok


def load_lm(source: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
            seed: int = 0, **kwargs) -> LanguageModel:
    """Load a causal LM from a model folder, an adapter folder, a GGUF file or a config
    file, with its tokenizer (``kwargs``: :func:`load_text_model`'s)."""
    from transformers import AutoModelForCausalLM

    return load_text_model(source, AutoModelForCausalLM, "causal language model",
                           tokenizer=tokenizer, seed=seed, **kwargs)


def load_text_model(source: str | os.PathLike, auto, what: str, *,
                    tokenizer: str | os.PathLike | None = None, seed: int = 0,
                    config_defaults: dict[str, Any] | None = None,
                    quantization=None, trainable: bool = False) -> LanguageModel:
    """Load a model through the ``auto`` class (``AutoModelForCausalLM``,
    ``AutoModelForSeq2SeqLM``) from a model folder, an adapter folder (its base loaded from
    the path its fd.json names, checked against the recorded fingerprint; ``trainable``
    keeps the adapter trainable), a GGUF file (dequantized; its fingerprint is the file's
    sha256) or a config file, with its tokenizer. ``config_defaults`` fills a config file's
    unset fields after the tokenizer's special ids; a string value there names the field
    whose value to copy. ``quantization``: a ``BitsAndBytesConfig`` for the weights of a
    model folder (QLoRA)."""
    from transformers import AutoConfig

    from .adapters import is_adapter_folder

    path = Path(source)
    if is_adapter_folder(path):
        return _load_adapter_folder(path, auto, what, tokenizer, quantization, trainable)
    known = None
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a model directory; expected a config.json (a folder"
                             " that from_pretrained reads), an adapter_config.json (a LoRA "
                             "adapter), a GGUF file or a config file")
        tok = _load_tokenizer(path, tokenizer, str(path))
        meta = read_fd_meta(path)
        known = meta.get("model_fingerprint") if quantization is None else None
        kwargs = {"quantization_config": quantization} if quantization is not None else {}
        try:
            model = auto.from_pretrained(str(path), **kwargs)
        except Exception as exc:
            raise ModelError(f"{path}: could not load a {what} ({exc})") from None
    elif path.is_file() and path.suffix.lower() == ".gguf":
        model, tok = load_gguf(path, auto, what, tokenizer)
        meta = {}
        from .adapters import file_fingerprint

        known = file_fingerprint(path)
    elif path.is_file():
        cfg = read_config_file(path)
        tok = _load_tokenizer(None, tokenizer, str(path))
        meta = {}
        model_type = cfg.pop("model_type")
        cfg.setdefault("vocab_size", len(tok))
        # special ids come from the tokenizer, or are unset when it has none, so that no
        # architecture default (GPT-2's 50256) outside the vocabulary remains
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            cfg.setdefault(key, getattr(tok, key, None))
        for key, value in (config_defaults or {}).items():
            cfg.setdefault(key, cfg.get(value) if isinstance(value, str) else value)
        try:
            config = AutoConfig.for_model(model_type, **cfg)
            torch.manual_seed(seed)
            model = auto.from_config(config)
        except Exception as exc:
            raise ModelError(f"{path}: not a valid {model_type!r} {what} config ({exc})") \
                from None
    else:
        raise ModelError(f"{path}: no such model directory, GGUF file or config file")
    width = model.get_output_embeddings().weight.shape[0] \
        if model.get_output_embeddings() is not None else model.config.vocab_size
    if width < len(tok):
        raise ModelError(f"{path}: the model predicts {width} ids but its tokenizer has "
                         f"{len(tok)}; expected a vocab_size of at least {len(tok)}")
    return LanguageModel(model, tok, meta, known_fingerprint=known)


def load_gguf(path: Path, auto, what: str, tokenizer, **kwargs):
    """A GGUF checkpoint through transformers' GGUF support (the ``auto`` class, with
    ``kwargs`` for ``from_pretrained``): dequantized to ordinary fp32 weights that save as
    safetensors, and its own tokenizer unless one is given."""
    from importlib.util import find_spec

    from transformers import AutoTokenizer

    if find_spec("gguf") is None:
        raise ModelError(f"{path}: reading a GGUF file needs the gguf library, which is not "
                         "installed; install fd with it: pip install 'fdcli[llm]'")
    try:
        model = auto.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    except Exception as exc:
        raise ModelError(f"{path}: could not load a {what} from this GGUF file ({exc}); "
                         "expected an architecture that transformers' GGUF support reads "
                         "(llama, mistral, qwen2, gemma, phi3, gpt2, ...)") from None
    # the weights are dequantized already: drop the GGUF quantizer that refuses to save them
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer is not None:
        tok = _load_tokenizer(None, tokenizer, str(path))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:
            raise ModelError(f"{path}: could not read the GGUF file's tokenizer ({exc}); pass "
                             "--tokenizer DIR") from None
    return model, tok


def _load_adapter_folder(path: Path, auto, what: str, tokenizer, quantization,
                         trainable: bool) -> LanguageModel:
    """An adapter folder: its base (checked against the recorded fingerprint) with the
    adapter on it, and the tokenizer saved beside the adapter."""
    from .adapters import base_of, check_base, load_adapter

    meta = read_fd_meta(path)
    base_path, expected = base_of(path, meta)
    check_base(path, base_path, expected)
    base = load_text_model(base_path, auto, what, tokenizer=tokenizer or path,
                           quantization=quantization)
    model = load_adapter(base.model, path, trainable=trainable)
    return LanguageModel(model, base.tokenizer, meta,
                         known_fingerprint=meta.get("model_fingerprint"),
                         base=meta.get("base_model"))


def max_positions(model) -> int | None:
    """The most positions the model reads, where its config says (None when unbounded)."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def vocab_fingerprint(tokenizer) -> str:
    """Fingerprint of the tokenizer's vocabulary: every token string in id order."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return fingerprint_labels([str(t) for t in tokens])


@dataclass
class TextBlocks:
    """Token ids of every example, and what made them."""

    blocks: list[list[int]]
    max_length: int
    packing: bool
    text_column: str
    documents: int
    fingerprint: str
    dropped: int = 0  # instruction examples with no response token left
    #: the most blocks one document was cut into (None: packed, blocks span documents)
    blocks_per_document: int | None = None

    @property
    def tokens(self) -> int:
        return sum(len(b) for b in self.blocks)

    @property
    def chat(self) -> bool:
        """Instruction examples (:class:`Turn`): rows on response tokens only."""
        return bool(self.blocks) and isinstance(self.blocks[0], Turn)

    def describe(self) -> str:
        if self.chat:
            return f"instruction examples ({self.text_column}) cut to --max-length " \
                   f"{self.max_length}"
        return (f"{'packed' if self.packing else 'truncated'} to --max-length "
                f"{self.max_length}")


class Turn(list):
    """The token ids of a prompt and its response (an instruction example). Its rows, and
    its loss, are the positions that predict the response's tokens only: ``start - 1`` to
    ``len - 2``, where ``start`` is the response's first position."""

    __slots__ = ("start",)

    def __init__(self, ids, start: int):
        super().__init__(ids)
        self.start = start


def row_span(block) -> tuple[int, int]:
    """The positions ``[first, end)`` of a block that carry rows: every position of raw
    text, the response-predicting ones of a :class:`Turn`."""
    start = getattr(block, "start", None)
    return (0, len(block)) if start is None else (start - 1, len(block) - 1)


def row_count(block) -> int:
    first, end = row_span(block)
    return end - first


def text_blocks(ds, where: str, tokenizer, *, text_column: str | None = None,
                max_length: int = DEFAULT_LM_MAX_LENGTH, packing: bool = True,
                per_document: bool = False) -> TextBlocks:
    """Tokenize a dataset's text column into blocks of at most ``max_length`` tokens.

    Packing joins documents with the end-of-text token (when the tokenizer has one) and cuts
    the stream every ``max_length`` tokens; with ``per_document`` each document (and its
    end-of-text token) is cut alone, so that no block holds two documents (DP-SGD's unit);
    without packing each document is truncated. Blocks shorter than two tokens are dropped.
    The fingerprint covers the vocabulary and every block, so emit and distill agree exactly
    on what each example is."""
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer of at least 2, got {max_length!r}")
    column = pick_column(list(ds.column_names), text_column, TEXT_COLUMNS, "text", where,
                   "--text-column")
    if column is None:
        raise DataError(f"{where}: no text column found; expected one of {list(TEXT_COLUMNS)},"
                        f" found {list(ds.column_names)}; set --text-column")
    texts = [str(t) for t in ds[column] if t is not None]
    eos = getattr(tokenizer, "eos_token_id", None)
    blocks: list[list[int]] = []
    stream: list[int] = []
    most = 1
    for start in range(0, len(texts), 1000):
        # verbose=False: the "longer than the maximum sequence length" warning does not apply,
        # since the documents are cut into blocks here
        encoded = tokenizer(texts[start:start + 1000], add_special_tokens=False,
                            verbose=False)["input_ids"]
        for ids in encoded:
            if packing and per_document:
                ids = ids + ([eos] if eos is not None else [])
                pieces = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
                pieces = [p for p in pieces if len(p) >= 2]
                blocks.extend(pieces)
                most = max(most, len(pieces))
            elif packing:
                stream.extend(ids + ([eos] if eos is not None else []))
                while len(stream) >= max_length:
                    blocks.append(stream[:max_length])
                    stream = stream[max_length:]
            elif len(ids) >= 2:
                blocks.append(ids[:max_length])
    if packing and len(stream) >= 2:
        blocks.append(stream)
    if not blocks:
        raise DataError(f"{where}: column {column!r} holds no text of two or more tokens; "
                        "expected documents to train or score a language model on")
    digest = hashlib.sha256(f"causal-lm:{vocab_fingerprint(tokenizer)}:{len(blocks)}".encode())
    for b in blocks:
        digest.update(len(b).to_bytes(4, "little"))
        digest.update(torch.tensor(b, dtype=torch.int32).numpy().tobytes())
    return TextBlocks(blocks, max_length, packing, column, len(texts),
                      "sha256:" + digest.hexdigest(),
                      blocks_per_document=None if packing and not per_document else most)


def pad_blocks(blocks: Sequence[Sequence[int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[B, L]`` (right padding); ``next_ids``: the
    token each position predicts, -100 at the last position of a block and at padding; and
    ``row_mask``: the positions that are rows (:func:`row_span`)."""
    width = max(len(b) for b in blocks)
    ids = torch.full((len(blocks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(blocks), width), dtype=torch.long)
    rows = torch.zeros((len(blocks), width), dtype=torch.bool)
    nxt = torch.full((len(blocks), width), -100, dtype=torch.long)
    for i, b in enumerate(blocks):
        t = torch.tensor(b, dtype=torch.long)
        ids[i, :len(b)] = t
        mask[i, :len(b)] = 1
        first, end = row_span(b)
        rows[i, first:end] = True
        nxt[i, :len(b) - 1] = t[1:]
    return {"input_ids": ids, "attention_mask": mask, "next_ids": nxt, "row_mask": rows}


def token_logits(model, batch: dict[str, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """Logits ``[B, L, vocab_size]`` of a causal LM for a padded batch (no key-value cache:
    nothing is generated)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                use_cache=False)
    return out.logits[..., :vocab_size]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on ``device``; to a GPU through pinned memory without waiting for
    it, so that the host can queue the next batch while the GPU runs this one."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def masked_rows(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rows ``[n, V]`` of ``logits [B, L, V]`` where the host-side ``mask [B, L]`` is
    set, chosen without waiting for the device."""
    flat = logits.reshape(-1, logits.shape[-1])
    if bool(mask.all()):
        return flat
    return flat.index_select(0, to_device({"i": mask.view(-1).nonzero().view(-1)},
                                          logits.device)["i"])


@torch.no_grad()
def iter_token_logits(lm: LanguageModel, blocks: Sequence[Sequence[int]], batch_size: int = 8,
                      ) -> Iterator[tuple[range, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each batch of blocks: their indices, the logits of every row ``[rows, V]`` (every
    real position of raw text, the response-predicting ones of a :class:`Turn`; on the
    model's device, in its dtype), the rows per block, and the next-token ids of those rows
    (-100 where a raw block ends). Nothing here waits for the
    device: the real positions are chosen from the padding mask on the host."""
    lm.model.eval()
    device = next(lm.model.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size]
        batch = pad_blocks(chunk, pad)
        mask = batch.pop("row_mask")
        logits = token_logits(lm.model, to_device(batch, device), lm.vocab_size)
        yield (range(start, start + len(chunk)), masked_rows(logits, mask),
               torch.tensor([row_count(b) for b in chunk]), batch["next_ids"][mask])


def save_lm(lm: LanguageModel, out: Path, meta: dict[str, Any], merge: bool = False) -> None:
    """Write a folder that ``from_pretrained`` reads (model and tokenizer), plus fd.json.
    An adapter model writes an adapter folder (peft's files; fd.json's ``base_model`` names
    the base), or with ``merge`` its merged full weights."""
    from .adapters import save_model

    save_model(lm.model, out, meta, base=lm.base, merge=merge)
    lm.tokenizer.save_pretrained(str(out))


def train_bpe_tokenizer(texts: Sequence[str], out: str | os.PathLike,
                        vocab_size: int = 2048) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` and save it as a normal tokenizer folder
    (``AutoTokenizer.from_pretrained`` reads it), with ``<|endoftext|>`` as its end-of-text
    and padding token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    out = Path(out)
    fast.save_pretrained(str(out))
    return out
