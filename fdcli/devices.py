"""Devices and precision: where a model runs and in which dtype (docs/scaling.md). Which
process this is among several lives in :mod:`fdcli.launch`. No training code and no I/O."""

from __future__ import annotations

import torch

from .launch import Ranks, ranks, share  # noqa: F401  (re-exported)

DTYPES = ("auto", "bf16", "fp16", "fp32")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device() -> torch.device:
    """The GPU this process owns (``cuda:LOCAL_RANK``), or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", ranks().local % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_dtype(name: str, where: torch.device | str | None = None) -> torch.dtype:
    """The torch dtype for ``--dtype``: ``auto`` is bf16 on a GPU that supports it, else fp32
    (fp32 on the CPU). fp16 and bf16 are refused where the device cannot run them."""
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {name!r}")
    where = torch.device(where) if where is not None else device()
    cuda = where.type == "cuda"
    if name == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if name == "fp16" and not cuda:
        raise ValueError("--dtype fp16 needs a GPU; on the CPU use fp32 (or bf16)")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bf16: {torch.cuda.get_device_name(where)} does not support "
                         "bfloat16; use fp16 or fp32")
    return _TORCH_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _TORCH_DTYPES.items()}[dtype]


def place(model, dtype: str = "auto") -> str:
    """Move a model for inference to this process's device, in ``dtype`` (``--dtype``);
    returns the dtype's name (``bf16``, ``fp16`` or ``fp32``)."""
    where = device()
    resolved = resolve_dtype(dtype, where)
    model.to(where, resolved)
    model.eval()
    return dtype_name(resolved)


def trainer_precision(dtype: str) -> dict[str, bool]:
    """TrainingArguments for ``--dtype`` when training: mixed precision (the weights stay fp32
    and are saved as fp32); ``auto`` is bf16 on a GPU that supports it."""
    resolved = resolve_dtype(dtype)
    return {"bf16": resolved == torch.bfloat16, "fp16": resolved == torch.float16}
