"""What every codec shares: the :class:`Codec` interface, and the checks a codec runs on
the tensors it reads (each named for the manifest field it checks)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..sparse import SparseRows, index_dtype, log_softmax_rows, temper_sparse

#: log-probabilities are clamped here before they are rounded, so fp16 never overflows.
FP16_FLOOR = -60000.0
#: topk on the CPU computes the tail exactly (masked log-sum-exp) below this tail mass
EXACT_TAIL_BELOW = 1e-2


class Codec:
    """One encoding. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str]
    #: row-wise codecs encode each batch as it arrives; others encode a whole shard at once.
    row_wise: ClassVar[bool] = True
    #: tensors that belong to the whole shard rather than to rows.
    shared_tensors: ClassVar[tuple[str, ...]] = ()
    #: the encoding draws at random (the writer then seeds a generator per batch).
    random: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, logp: torch.Tensor, lse: torch.Tensor, num_classes: int,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Tensors for rows given as fp32 log-probs and raw-logit log-sum-exp
        (:func:`log_softmax_rows`)."""
        raise NotImplementedError

    def encode_logits(self, logits: torch.Tensor, num_classes: int,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Tensors for raw logits (any float dtype), on the logits' device; the writer copies
        them to the host and passes them through :meth:`finish`. ``generator`` is on that
        device. An optional ``_bad`` (0-d) counts the rows with a NaN, +inf or no finite
        logit, when the encoder finds them anyway (the writer then skips its own check)."""
        return self.encode(*log_softmax_rows(logits), num_classes, generator)

    def finish(self, tensors: dict[str, torch.Tensor], num_classes: int
               ) -> dict[str, torch.Tensor]:
        """Host-side tidying of :meth:`encode_logits`'s tensors (what would make the device
        synchronise, or what its kernels lack): ids become the stored unsigned dtype."""
        ids = tensors.get("ids")
        if ids is not None and ids.dtype != index_dtype(num_classes):
            tensors = tensors | {"ids": ids.to(index_dtype(num_classes))}
        return tensors

    def expected(self, rows: int, num_classes: int,
                 widths: dict[str, int]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """The dtype and shape of every tensor in a shard of ``rows`` rows. ``widths`` holds the
        free dimensions read from the shard itself (checked separately by :meth:`check_widths`)."""
        raise NotImplementedError

    def widths(self, header: dict[str, dict]) -> dict[str, int]:
        return {}

    def check_widths(self, widths: dict[str, int]) -> list[str]:
        return []

    def sparse(self, tensors: dict[str, torch.Tensor], num_classes: int) -> SparseRows:
        raise NotImplementedError

    def check_values(self, tensors: dict[str, torch.Tensor], num_classes: int) -> list[str]:
        """Problems with the values (not the shapes) of a decoded shard."""
        raise NotImplementedError

    def fidelity(self, logp: torch.Tensor, tensors: dict[str, torch.Tensor],
                 num_classes: int) -> dict[str, torch.Tensor]:
        """Per-row ``tail_mass``, ``kl`` and, where it applies, ``truncation_kl``, of the stored
        tensors against the exact log-probs ``logp`` they were encoded from."""
        raise NotImplementedError

    # shared ------------------------------------------------------------------------------
    def dense(self, tensors: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        return self.sparse(tensors, num_classes).to_dense()

    def sparse_at(self, tensors, num_classes: int, temperature: float) -> SparseRows:
        rows = self.sparse(tensors, num_classes)
        return rows if temperature == 1.0 else temper_sparse(rows, temperature)

    def dense_at(self, tensors, num_classes: int, temperature: float) -> torch.Tensor:
        if temperature == 1.0:
            return self.dense(tensors, num_classes)
        return self.sparse_at(tensors, num_classes, temperature).to_dense()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def ids_out(ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Ids in the stored dtype on the CPU; on a GPU, whose kernels lack most unsigned types,
    a signed one wide enough (:meth:`Codec.finish` converts them on the host)."""
    if ids.device.type == "cpu":
        return ids.to(index_dtype(num_classes))
    return ids.to(torch.int32 if num_classes <= 1 << 31 else torch.int64)


def bad_rows(m: torch.Tensor) -> dict[str, torch.Tensor]:
    """``_bad``: how many rows have a row maximum ``m`` that is NaN or infinite (a NaN or
    +inf logit, or no finite one): the writer refuses the batch then, with no extra read."""
    return {"_bad": (~torch.isfinite(m)).sum()}


def nonfinite(name: str, t: torch.Tensor, allow_neg_inf: bool = False) -> list[str]:
    bad = torch.isnan(t) | (t == math.inf)
    if not allow_neg_inf:
        bad |= t == -math.inf
    n = int(bad.sum())
    if n:
        what = "NaN or +Inf" if allow_neg_inf else "NaN or Inf"
        return [f"tensor '{name}': {n} value(s) are {what}; expected finite log-probabilities"]
    return []


def ids_in_range(name: str, ids: torch.Tensor, num_classes: int) -> list[str]:
    top = int(ids.to(torch.int64).max()) if ids.numel() else 0
    if top >= num_classes:
        return [f"tensor '{name}': id {top} is out of range; "
                f"expected ids below num_classes={num_classes}"]
    return []


def normalised(name: str, total_log: torch.Tensor, tol: float) -> list[str]:
    finite = torch.isfinite(total_log)
    if not bool(finite.all()):
        return [f"tensor '{name}': {int((~finite).sum())} row(s) sum to a non-finite mass"]
    worst = float(total_log.abs().max()) if total_log.numel() else 0.0
    if worst > tol:
        return [f"tensor '{name}': rows are not normalised (|log of total mass| up to {worst:.3g},"
                f" expected at most {tol:.3g})"]
    return []
