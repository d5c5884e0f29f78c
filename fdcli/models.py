"""Classification models: load from a local directory or a config file, batch inputs, save.

A model source is either a directory that ``from_pretrained`` reads (config.json and weights,
with a tokenizer or image processor beside them) or a JSON/YAML config file with a
``model_type`` for random initialisation. Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import DataError, to_rgb
from .errors import FdError
from .meta import read_fd_meta

DEFAULT_MAX_LENGTH = 128


class ModelError(FdError):
    """A model source that is not a usable model."""


@dataclass
class Classifier:
    """A model with what it needs to read inputs, and its label space."""

    model: Any
    processor: Any
    kind: str                  # "text" or "image"
    label_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)  # fd.json of a model fd trained
    base: dict[str, str] | None = None  # the base model of an adapter, fresh or loaded

    def fingerprint(self) -> str:
        """The fingerprint of the weights as loaded."""
        return self.meta.get("model_fingerprint") or fingerprint_model(self.model)

    @property
    def architecture(self) -> str:
        return self.model.config.model_type


def _auto(kind: str):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    return AutoModelForImageClassification if kind == "image" else \
        AutoModelForSequenceClassification


def read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            cfg = yaml.safe_load(text)
        else:
            cfg = json.loads(text)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable config ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise ModelError(f"{path}: a model config needs a 'model_type' field (for example "
                         "'bert', 'vit' or 'resnet'); found none")
    return cfg


def _image_processor(source: Path | None, config) -> Any:
    from transformers import AutoImageProcessor, ViTImageProcessor

    if source is not None and (source / "preprocessor_config.json").exists():
        return AutoImageProcessor.from_pretrained(str(source))
    size = int(getattr(config, "image_size", 224) or 224)
    return ViTImageProcessor(size={"height": size, "width": size})


def find_tokenizer(source: Path | None, tokenizer: str | os.PathLike | None, where: str):
    """The tokenizer in ``tokenizer`` (a folder), else beside the model in ``source``; None
    when neither holds one."""
    from transformers import AutoTokenizer

    for candidate in (tokenizer, source):
        if candidate is not None and Path(candidate).is_dir() and any(
                (Path(candidate) / f).exists() for f in ("tokenizer.json", "vocab.txt",
                                                          "vocab.json",
                                                          "tokenizer_config.json")):
            try:
                return AutoTokenizer.from_pretrained(str(candidate))
            except Exception as exc:
                raise ModelError(f"{candidate}: not a readable tokenizer folder ({exc})") \
                    from None
    return None


def load_classifier(source: str | os.PathLike, kind: str, label_names: Sequence[str] | None,
                    *, tokenizer: str | os.PathLike | None = None, seed: int = 0,
                    quantization=None, trainable: bool = False) -> Classifier:
    """Load a classifier for ``kind`` inputs over ``label_names``.

    A model fd trained carries its label space in fd.json; asking for another one is an error.
    Any other model gets a fresh classification head of the right size (drawn with ``seed``),
    or keeps its own (with the names in its config) when ``label_names`` is None. An adapter
    folder loads as its base with the adapter (and its head) on it (``trainable``: to
    continue training it); ``quantization`` is a ``BitsAndBytesConfig`` for a QLoRA base.
    """
    from .adapters import is_adapter_folder

    path = Path(source)
    if is_adapter_folder(path):
        return _load_adapter_classifier(path, kind, label_names, tokenizer, seed, quantization,
                                        trainable)
    if path.is_dir():
        meta = read_fd_meta(path)
        own = meta.get("label_names")
        if own is not None and label_names is not None and list(own) != list(label_names):
            raise DataError(f"{path}: the model's label space {own} differs from the data's "
                            f"{list(label_names)}")
        names = list(own or label_names or [])
        config = dir_config(path, kind)
        kwargs = {"quantization_config": quantization} if quantization is not None else {}
        if names:
            kwargs |= {"num_labels": len(names), "id2label": dict(enumerate(names)),
                       "label2id": {n: i for i, n in enumerate(names)},
                       "ignore_mismatched_sizes": True}
        torch.manual_seed(seed)
        try:
            model = _auto(kind).from_pretrained(str(path), **kwargs)
        except Exception as exc:
            raise ModelError(f"{path}: could not load a {kind} classifier ({exc})") from None
        if not names:  # a model fd did not train, asked for its own label space
            names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        processor = processor_for(kind, path, config, tokenizer)
    elif path.is_file() and path.suffix.lower() == ".gguf":
        model, processor = _gguf_classifier(path, kind, list(label_names or []), tokenizer,
                                            seed)
        meta, names = {}, list(label_names)
    elif path.is_file():
        meta, names = {}, list(label_names or [])
        if not names:
            raise ModelError(f"{path}: a model built from a config needs the label space of "
                             "its data")
        config = file_config(path, kind, num_labels=len(names),
                             id2label=dict(enumerate(names)),
                             label2id={n: i for i, n in enumerate(names)})
        torch.manual_seed(seed)
        model = _auto(kind).from_config(config)
        processor = processor_for(kind, None, config, tokenizer, path)
    else:
        raise ModelError(f"{path}: no such model directory or config file")
    if kind == "text":
        _pad_with_eos(model, processor)
    return Classifier(model, processor, kind, names, meta)


def _gguf_classifier(path: Path, kind: str, names: list[str], tokenizer, seed: int):
    """A text classifier on a GGUF language model's weights (dequantized), with a fresh head
    over ``names`` drawn with ``seed``."""
    from transformers import AutoModelForSequenceClassification

    from .lm import load_gguf

    if kind != "text":
        raise DataError(f"{path}: a GGUF file holds a language model, which classifies text; "
                        f"the data holds {kind}")
    if not names:
        raise ModelError(f"{path}: a classifier on a GGUF language model needs the label space "
                         "of its data")
    torch.manual_seed(seed)
    model, tok = load_gguf(path, AutoModelForSequenceClassification, "text classifier",
                           tokenizer, num_labels=len(names), id2label=dict(enumerate(names)),
                           label2id={n: i for i, n in enumerate(names)})
    return model, tok


def _pad_with_eos(model, tokenizer) -> None:
    """A language model's tokenizer often has no padding token: a classifier on it pads with
    its end-of-text token, and its config says so (a decoder classifies from the last token
    that is not padding)."""
    if getattr(tokenizer, "pad_token", "") is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id


def _load_adapter_classifier(path: Path, kind: str, label_names, tokenizer, seed: int,
                             quantization, trainable: bool) -> Classifier:
    from .adapters import base_of, check_base, load_adapter

    meta = read_fd_meta(path)
    own = meta.get("label_names")
    if own is not None and label_names is not None and list(own) != list(label_names):
        raise DataError(f"{path}: the model's label space {own} differs from the data's "
                        f"{list(label_names)}")
    base_path, expected = base_of(path, meta)
    check_base(path, base_path, expected)
    base = load_classifier(base_path, kind, own or label_names, tokenizer=tokenizer, seed=seed,
                           quantization=quantization)
    model = load_adapter(base.model, path, trainable=trainable)
    return Classifier(model, base.processor, kind, base.label_names, meta,
                      base=meta.get("base_model"))


def dir_config(path: Path, kind: str):
    """The transformers config of the model folder ``path``, checked to take ``kind``
    inputs."""
    from transformers import AutoConfig

    if not (path / "config.json").exists():
        raise ModelError(f"{path}: not a model directory; expected a config.json (a folder "
                         "that from_pretrained reads) or a config file")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise ModelError(f"{path}/config.json: not a transformers config ({exc})") from None
    _check_kind(config, kind, str(path))
    return config


def file_config(path: Path, kind: str, **extra):
    """The transformers config a config file (JSON/YAML with ``model_type``) describes, with
    ``extra`` fields, checked to take ``kind`` inputs."""
    from transformers import AutoConfig

    cfg = read_config_file(path)
    model_type = cfg.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **cfg, **extra)
    except Exception as exc:
        raise ModelError(f"{path}: not a valid {model_type!r} config ({exc})") from None
    _check_kind(config, kind, str(path))
    return config


def processor_for(kind: str, source: Path | None, config, tokenizer, where=None):
    """The image processor or tokenizer of a model from the folder ``source`` (None: a
    config file at ``where``); a text model must have a tokenizer."""
    where = source if where is None else where
    if kind == "image":
        return _image_processor(source, config)
    found = find_tokenizer(source, tokenizer, str(where))
    if found is None:
        raise ModelError(f"{where}: no tokenizer found; put one beside the model or pass "
                         "--tokenizer DIR")
    return found


def _check_kind(config, kind: str, where: str) -> None:
    is_image = hasattr(config, "num_channels") or hasattr(config, "image_size")
    if is_image != (kind == "image"):
        raise DataError(f"{where}: a {config.model_type!r} model takes "
                        f"{'images' if is_image else 'text'}, but the data holds {kind}")


def batch_inputs(clf: Classifier, values: list[Any],
                 max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Model inputs for a batch of raw texts or images."""
    if clf.kind == "image":
        return {"pixel_values": clf.processor(images=[to_rgb(v) for v in values],
                                              return_tensors="pt")["pixel_values"]}
    return dict(clf.processor([str(v) for v in values], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt"))


def fingerprint_model(model) -> str:
    """sha256 over the model's parameter names and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
                      .numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def save_classifier(clf: Classifier, out: Path, meta: dict[str, Any],
                    merge: bool = False) -> None:
    """Write a directory that ``from_pretrained`` reads, plus fd.json (an adapter folder for
    an adapter model, or with ``merge`` its merged weights: :func:`~fdcli.adapters.save_model`)."""
    from .adapters import save_model

    save_model(clf.model, out, meta, base=clf.base, merge=merge)
    if clf.processor is not None:
        clf.processor.save_pretrained(str(out))


@torch.no_grad()
def predict_logits(clf: Classifier, values: list[Any], batch_size: int = 64,
                   progress=None) -> torch.Tensor:
    """Logits ``[N, C]`` for raw inputs, in batches."""
    clf.model.eval()
    param = next(clf.model.parameters())
    out = []
    for start in range(0, len(values), batch_size):
        inputs = batch_inputs(clf, values[start:start + batch_size])
        inputs = {k: v.to(param.device, param.dtype if v.is_floating_point() else None)
                  for k, v in inputs.items()}
        out.append(clf.model(**inputs).logits.float().cpu())
        if progress is not None:
            progress(len(out[-1]))
    return torch.cat(out) if out else torch.zeros(0, len(clf.label_names))


def train_word_tokenizer(texts: Sequence[str], out: str | os.PathLike,
                         vocab_size: int = 5000) -> Path:
    """Train a word-level tokenizer on ``texts`` and save it as a normal tokenizer folder
    (``AutoTokenizer.from_pretrained`` reads it): for text models built from a config when
    no pretrained tokenizer is at hand."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts), trainers.WordLevelTrainer(vocab_size=vocab_size,
                                                                   special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    out = Path(out)
    fast.save_pretrained(str(out))
    return out
