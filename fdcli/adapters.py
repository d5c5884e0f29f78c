"""Parameter-efficient fine-tuning (LoRA, DoRA; QLoRA on a GPU) through the ``peft`` library,
and model folders that hold an adapter instead of full weights.

An **adapter folder** holds peft's files (``adapter_config.json``, ``adapter_model.safetensors``),
the tokenizer and ``fd.json``, whose ``base_model`` names the base the adapter was trained on:
``path`` (as given, and resolved) and ``fingerprint``. Loading one loads the base from that
path, checks its fingerprint, and puts the adapter on it; a base that moved or changed is
refused by name. ``--merge`` writes merged full weights instead (an ordinary model folder).

``peft`` is an optional dependency (``pip install 'fdcli[llm]'``): it is imported only when a
LoRA option is given or an adapter folder is read. 4-bit and 8-bit base weights (QLoRA) need
``bitsandbytes`` and a CUDA GPU; on a CPU they are refused before anything is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import FdError

ADAPTER_CONFIG = "adapter_config.json"
LORA_TYPES = ("lora", "dora")
QUANTIZE = ("4bit", "8bit")
#: peft's task types for fd's tasks
PEFT_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM",
                   "classification": "SEQ_CLS"}


class AdapterError(FdError):
    """A LoRA option that cannot apply, or an adapter folder whose base cannot be found."""


@dataclass(frozen=True)
class LoraSpec:
    """How to fine-tune with an adapter. ``alpha`` None is twice the rank; ``targets`` None
    is peft's default for the architecture, else every linear layer (``all-linear``)."""

    rank: int
    alpha: float | None = None
    dropout: float = 0.05
    targets: tuple[str, ...] | None = None
    kind: str = "lora"
    quantize: str | None = None

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise AdapterError(f"--lora-rank must be a whole number of at least 1, got "
                               f"{self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise AdapterError(f"--lora-alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise AdapterError(f"--lora-dropout must be in [0, 1), got {self.dropout!r}")
        if self.kind not in LORA_TYPES:
            raise AdapterError(f"--lora-type must be one of {list(LORA_TYPES)}, got "
                               f"{self.kind!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise AdapterError(f"--quantize must be one of {list(QUANTIZE)}, got "
                               f"{self.quantize!r}")

    def record(self) -> dict[str, Any]:
        return asdict(self) | {"targets": list(self.targets) if self.targets else None}


def lora_spec(rank: int | None, alpha: float | None = None, dropout: float | None = None,
              targets: str | list[str] | tuple[str, ...] | None = None,
              kind: str | None = None, quantize: str | None = None) -> LoraSpec | None:
    """The :class:`LoraSpec` the options ask for; None without a rank. Another LoRA option
    without ``--lora-rank`` is refused (it would be ignored)."""
    if rank is None:
        given = [name for name, v in (("--lora-alpha", alpha), ("--lora-dropout", dropout),
                                      ("--lora-targets", targets), ("--lora-type", kind),
                                      ("--quantize", quantize)) if v is not None]
        if given:
            raise AdapterError(f"{', '.join(given)} applies only with --lora-rank R (LoRA "
                               "fine-tuning); add --lora-rank or drop it")
        return None
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    return LoraSpec(rank=rank, alpha=alpha, dropout=0.05 if dropout is None else dropout,
                    targets=tuple(targets) if targets else None, kind=kind or "lora",
                    quantize=quantize)


def _peft():
    try:
        import peft
    except ImportError:
        raise AdapterError("LoRA needs the peft library, which is not installed; install "
                           "fd with it: pip install 'fdcli[llm]'") from None
    return peft


def quantization_config(spec: LoraSpec | None):
    """transformers' ``BitsAndBytesConfig`` for a QLoRA base (None without ``quantize``);
    refused by name without a CUDA GPU or without bitsandbytes."""
    if spec is None or spec.quantize is None:
        return None
    import torch

    if not torch.cuda.is_available():
        raise AdapterError(f"--quantize {spec.quantize} (QLoRA: base weights in "
                           f"{spec.quantize[0]} bits through bitsandbytes) needs a CUDA GPU, "
                           "and this machine has none; drop --quantize to train LoRA on "
                           "full-precision base weights")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise AdapterError(f"--quantize {spec.quantize} needs the bitsandbytes library, which "
                           "is not installed (pip install bitsandbytes)") from None
    from transformers import BitsAndBytesConfig

    if spec.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)


def default_targets(model) -> list[str] | str:
    """peft's target modules for the model's architecture, or every linear layer."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

    return list(known.get(model.config.model_type, [])) or "all-linear"


def apply_lora(model, spec: LoraSpec, task: str, seed: int = 0):
    """``model`` wrapped in a fresh adapter (a ``PeftModel``; only the adapter, and a
    classifier's head, train), its initial weights drawn with ``seed``."""
    import torch

    peft = _peft()
    torch.manual_seed(seed)
    if spec.quantize is not None:
        model = peft.prepare_model_for_kbit_training(model)
    config = peft.LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha if spec.alpha is not None else 2 * spec.rank,
        lora_dropout=spec.dropout,
        target_modules=list(spec.targets) if spec.targets else default_targets(model),
        use_dora=spec.kind == "dora", task_type=PEFT_TASK_TYPES[task])
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module the model lacks
        raise AdapterError(f"--lora-targets: {exc}") from None


def is_adapter(model) -> bool:
    return type(model).__module__.startswith("peft")


def trainable_parameters(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable,
            "parameters": sum(p.numel() for p in model.parameters())}


def base_record(source: str | Path, fingerprint: str) -> dict[str, str]:
    """fd.json's ``base_model``: the base's path as given and resolved, and its
    fingerprint."""
    return {"path": str(source), "resolved": str(Path(source).resolve()),
            "fingerprint": fingerprint}


def is_adapter_folder(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file() \
        and not (path / "config.json").exists()


def base_of(folder: Path, meta: dict[str, Any]) -> tuple[Path, str | None]:
    """The base model an adapter folder names (fd.json's ``base_model``, else peft's
    ``base_model_name_or_path``) and its fingerprint, if recorded; a base that is not on this
    machine is refused by name."""
    base = meta.get("base_model") if isinstance(meta.get("base_model"), dict) else {}
    candidates = [base.get("resolved"), base.get("path")]
    if not any(candidates):
        from .bundle.safeio import DEFAULT_LIMITS, parse_json, read_regular

        where = folder / ADAPTER_CONFIG
        try:  # read as a manifest is: bounded, no symlink or FIFO
            cfg = parse_json(read_regular(where, DEFAULT_LIMITS.max_manifest_bytes,
                                          "max_manifest_bytes"), where, DEFAULT_LIMITS)
        except OSError as exc:
            raise AdapterError(f"{where}: unreadable ({exc})") from None
        candidates = [cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None]
    for c in candidates:
        if isinstance(c, str) and c and Path(c).exists():
            return Path(c), base.get("fingerprint")
    named = next((c for c in candidates if isinstance(c, str) and c), None)
    raise AdapterError(f"{folder}: an adapter whose base model {named!r} is not on this "
                       f"machine (fingerprint {base.get('fingerprint', 'not recorded')}); "
                       "put the base model at that path, or merge the adapter where the base "
                       "is (fd train-specialist/distill --merge)")


def check_base(folder: Path, base: Path, expected: str | None) -> None:
    """Refuse a base whose weight files are not the ones the adapter was trained on."""
    if expected is None:
        return
    found = source_fingerprint(base)
    if expected != found:
        raise AdapterError(f"{folder}: its adapter was trained on a base model with "
                           f"fingerprint {expected}, but {base} has {found}; the base at that "
                           "path changed; put the original base there")


def load_adapter(base_model, folder: Path, trainable: bool = False):
    """The base model with the adapter of ``folder`` on it (a ``PeftModel``; ``trainable``
    keeps the adapter's weights trainable, to continue training it)."""
    peft = _peft()
    try:
        return peft.PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)
    except Exception as exc:
        raise AdapterError(f"{folder}: could not load its adapter onto the base ({exc})") \
            from None


def merged(model):
    """A ``PeftModel``'s base with the adapter merged into its weights (an ordinary model)."""
    return model.merge_and_unload() if is_adapter(model) else model


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (a GGUF checkpoint's fingerprint)."""
    digest = hashlib.sha256()
    _hash_file(digest, path)
    return "sha256:" + digest.hexdigest()


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)


#: the files that hold a model folder's weights
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")


def source_fingerprint(source: str | Path) -> str:
    """The fingerprint of a base model as stored: a GGUF file's sha256, or sha256 over a model
    folder's weight files (names and bytes, in name order). It reads the files, not a loaded
    model, so a classification head drawn on loading does not enter it."""
    path = Path(source)
    if path.is_file():
        return file_fingerprint(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_FILES)
    if not files:
        raise AdapterError(f"{path}: no weight files ({', '.join(WEIGHT_FILES)}) to "
                           "fingerprint; expected a model folder that from_pretrained reads")
    for p in files:
        digest.update(p.name.encode() + b"\0")
        _hash_file(digest, p)
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class Tuning:
    """How a model is trained: all its weights, or a LoRA adapter (``spec``); ``merge``
    writes an adapter merged into full weights; ``gradient_checkpointing`` trades compute for
    activation memory."""

    spec: LoraSpec | None = None
    merge: bool = False
    gradient_checkpointing: bool = False

    @classmethod
    def of(cls, source: str | Path, lora_rank: int | None = None,
           lora_alpha: float | None = None, lora_dropout: float | None = None,
           lora_targets: str | list[str] | None = None, lora_type: str | None = None,
           quantize: str | None = None, merge: bool = False,
           gradient_checkpointing: bool = False) -> "Tuning":
        """The options of a training command, checked before anything is loaded."""
        spec = lora_spec(lora_rank, lora_alpha, lora_dropout, lora_targets, lora_type,
                         quantize)
        if merge and spec is None and not is_adapter_folder(Path(source)):
            raise AdapterError(f"--merge applies to a LoRA model (--lora-rank R, or an adapter "
                               f"folder as the model), and {source} is trained in full; add "
                               "--lora-rank or drop --merge")
        if spec is not None and is_adapter_folder(Path(source)):
            raise AdapterError(f"{source}: an adapter folder already (training continues its "
                               "own adapter); drop --lora-rank and the other LoRA options")
        quantization_config(spec)  # QLoRA on a CPU is refused now, not after loading
        return cls(spec, merge, gradient_checkpointing)

    def load(self, loader, source: str | Path, task: str, **kwargs):
        """The model ``loader`` (:func:`~fdcli.lm.load_lm`, ...) reads from ``source``, ready
        to train: with a fresh adapter when a spec is given, an adapter folder's own adapter
        trainable."""
        lm = loader(source, quantization=quantization_config(self.spec), trainable=True,
                    **kwargs)
        with_lora(lm, source, self.spec, task, kwargs.get("seed", 0))
        return lm

    def record(self) -> dict[str, Any]:
        """What fd.json's config records."""
        return {"lora": self.spec.record() if self.spec else None, "merge": self.merge,
                "gradient_checkpointing": self.gradient_checkpointing}


def with_lora(lm, source: str | Path, spec: LoraSpec | None, task: str,
              seed: int = 0) -> None:
    """Prepare ``lm`` (a :class:`~fdcli.lm.LanguageModel` or
    :class:`~fdcli.models.Classifier` loaded from ``source``) for training: with a spec, a
    fresh adapter on the base, whose path and fingerprint ``lm.base`` records. A model that
    is an adapter already continues training its adapter; a spec given for it, or for a
    model built from a config file (random weights), is refused."""
    if spec is None:
        return
    path = Path(source)
    if not (path.is_dir() or path.suffix.lower() == ".gguf"):
        raise AdapterError(f"{source}: a config file builds a model with random weights, and "
                           "LoRA fine-tunes a pretrained one; give --model a model folder or "
                           "a GGUF file, or drop --lora-rank")
    lm.base = base_record(source, source_fingerprint(path))
    lm.model = apply_lora(lm.model, spec, task, seed)


def save_model(model, out: Path, meta: dict[str, Any], *, base: dict[str, str] | None,
               merge: bool = False) -> None:
    """Write ``model`` to ``out`` with fd.json: full weights (``save_pretrained``), or an
    adapter's files with ``base_model`` in fd.json, or with ``merge`` the adapter merged into
    full weights (fd.json then records ``merged_from``)."""
    from .meta import write_fd_meta

    meta = dict(meta)
    if is_adapter(model):
        meta |= trainable_parameters(model)
        if merge:
            model = merged(model)
            meta["merged_from"] = base
            meta.pop("model_fingerprint", None)
            from .models import fingerprint_model

            meta["model_fingerprint"] = fingerprint_model(model)
        else:
            meta["base_model"] = base
    elif merge:
        raise AdapterError("--merge applies to a LoRA model (--lora-rank, or an adapter "
                           "folder as --model); this one has full weights")
    model.save_pretrained(str(out))
    write_fd_meta(out, meta)
