"""Differentially private training of classifiers: DP-SGD through Opacus (per-example
clipping, Poisson sampling, Gaussian noise) with its RDP accountant, in a loop of its own
(Opacus replaces the optimizer and the data loader, so it does not plug into the Trainer).

A guarantee is a plain dict that fd.json, and every bundle emitted from the model, carry:
epsilon (spent), delta, the accountant, and the accountant's history of (noise multiplier,
sampling rate, steps), so that training the same model again on the same data composes with
what it already spent (see docs/privacy.md)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .errors import FdError

ACCOUNTANT = "rdp"
#: what one unit of privacy is, for a DP-SGD specialist
PRIVACY_UNIT = "one training example of the institution's data"


class PrivacyError(FdError):
    """A model or setting that DP-SGD cannot make private, or a budget already spent."""


@dataclass(frozen=True)
class DPSettings:
    """The target guarantee: (``epsilon``, ``delta``)-DP, per-example gradients clipped to
    ``max_grad_norm`` (L2)."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"dp_epsilon must be a positive number, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp_delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a positive number, got "
                             f"{self.max_grad_norm}")


def dp_settings(epsilon: float | None, delta: float, max_grad_norm: float, teacher,
                tuning) -> DPSettings | None:
    """The DP target of a train-specialist run, or None without ``epsilon``; DP-SGD is
    refused where fd does not build it (digesting a ``teacher``, a quantized base, gradient
    checkpointing)."""
    if epsilon is None:
        if delta != 1e-5 or max_grad_norm != 1.0:
            raise ValueError("dp_delta and max_grad_norm apply to DP-SGD training; give "
                             "dp_epsilon too")
        return None
    dp = DPSettings(epsilon, delta, max_grad_norm)
    if teacher is not None:
        raise PrivacyError("--dp-epsilon with --teacher: digesting a consensus under DP-SGD "
                           "is not built (the proxy rows would share Poisson batches with "
                           "the private ones); train the later rounds without DP, or run "
                           "one-shot")
    if (tuning.spec is not None and tuning.spec.quantize) or tuning.gradient_checkpointing:
        raise PrivacyError("--dp-epsilon does not take --quantize or "
                           "--gradient-checkpointing (Opacus needs each layer's per-example "
                           "activations in full precision)")
    return dp


def prior_history(meta: dict[str, Any]) -> list[list[float]]:
    """The DP-SGD runs a model's fd.json says it was trained with (none: [])."""
    return list((meta.get("privacy") or {}).get("history", []))


def classification_loss(module, inputs: dict[str, torch.Tensor],
                        labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a classifier's logits, averaged over the batch."""
    return torch.nn.functional.cross_entropy(module(**inputs).logits.float(), labels)


def next_token_loss(vocab: int):
    """A causal LM's loss for DP-SGD: each example's mean next-token cross-entropy over its
    rows (targets -100 elsewhere), averaged over the batch, so that every example's
    gradient is its own (a mean over the batch's tokens would weight each example by the
    others' lengths)."""
    def loss(module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits = module(**inputs).logits[..., :vocab].float()
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets,
                                                      ignore_index=-100, reduction="none")
        rows = (targets != -100).sum(1).clamp(min=1)
        return (per_token.sum(1) / rows).mean()

    return loss


def refuse_unprivate(model: torch.nn.Module, where: str) -> None:
    """Refuse, by module name, what DP-SGD cannot make private (BatchNorm above all: it mixes
    the examples of a batch, so no per-example gradient exists)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    norms = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise PrivacyError(
            f"{where}: DP-SGD cannot train a model with BatchNorm ({len(norms)} layers, e.g. "
            f"{norms[0]}): it normalises each example with its batch-mates, so no "
            "per-example gradient exists to clip. Opacus can swap BatchNorm for GroupNorm, "
            "but that is another architecture that the transformers class cannot save or "
            "load; choose an architecture with LayerNorm (a ViT, a BERT) for DP")
    raise PrivacyError(f"{where}: Opacus cannot make this model private: "
                       + "; ".join(str(e).split(".")[0] for e in errors[:3]))


def schedule(n: int, batch_size: int, epochs: float) -> tuple[float, int]:
    """DP-SGD's sampling rate and steps for ``epochs`` over ``n`` examples at an expected
    ``batch_size``: Opacus samples each example with probability 1 / (batches per epoch)."""
    batches = math.ceil(n / batch_size)
    return 1.0 / batches, max(1, round(epochs * batches))


def spent(history: list[list[float]], delta: float) -> float:
    """Epsilon at ``delta`` of the composed DP-SGD runs ``history`` ((noise, rate, steps))."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    with warnings.catch_warnings():  # "optimal order is the smallest alpha": a loose bound
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


def noise_for(dp: DPSettings, sample_rate: float, steps: int,
              prior: list[list[float]] = ()) -> float:
    """The smallest noise multiplier (to 0.1%) for which ``prior`` runs and ``steps`` more at
    ``sample_rate`` stay within (``dp.epsilon``, ``dp.delta``): a bisection over the RDP
    accountant's composition."""
    if prior and spent(prior, dp.delta) >= dp.epsilon:
        raise PrivacyError(f"the model already spent epsilon {spent(prior, dp.delta):.3g} at "
                           f"delta {dp.delta:g} on its training data; a target of "
                           f"{dp.epsilon:g} leaves nothing for more training")
    found = smallest_noise(lambda sigma: spent([*prior, [sigma, sample_rate, steps]],
                                               dp.delta), dp.epsilon)
    if found is None:
        raise PrivacyError(f"no noise multiplier below 1e4 reaches epsilon {dp.epsilon:g} in "
                           f"{steps} steps at sampling rate {sample_rate:.3g}")
    return found


def smallest_noise(epsilon_of, epsilon: float) -> float | None:
    """The smallest noise (to 0.1%) whose ``epsilon_of(noise)`` is within ``epsilon``, by
    doubling then bisection (epsilon falls as noise grows); None above 1e4."""
    low, high = 0.0, 1.0
    while epsilon_of(high) > epsilon:
        low, high = high, high * 2
        if high > 1e4:
            return None
    while high - low > 0.001 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if epsilon_of(mid) > epsilon else (low, mid)
    return high


def private_fit(model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels,
                *, epochs: float, learning_rate: float, batch_size: int, seed: int,
                dp: DPSettings, prior: list[list[float]] = (), noise: float | None = None,
                total_steps: int | None = None, where: str = "model",
                progress: bool = True, loss=classification_loss,
                unit: str = PRIVACY_UNIT) -> tuple[dict[str, float], dict[str, Any]]:
    """Train ``model`` in place with DP-SGD on the examples ``inputs`` (model inputs, a
    tensor per key with one row per example) and ``labels`` (a label per example, or a
    tensor of per-example targets that ``loss`` reads: :func:`next_token_loss`); returns the
    training metrics and the guarantee, whose privacy unit ``unit`` names.

    Batches are Poisson samples of expected size about ``batch_size`` (:func:`schedule`);
    ``epochs`` sets the number of steps. The noise multiplier is the smallest that keeps
    ``prior`` runs plus this one within ``dp`` unless ``noise`` gives it (a caller that plans
    several runs, e.g. FedAvg's rounds, over ``total_steps``)."""
    from opacus import PrivacyEngine

    from .devices import device
    from .progress import progress_bar

    model.train()  # Opacus checks the layers in training mode
    refuse_unprivate(model, where)
    n = len(labels)
    if n == 0:
        raise PrivacyError(f"{where}: no training examples")
    sample_rate, steps = schedule(n, batch_size, epochs)
    if noise is None:
        noise = noise_for(dp, sample_rate, steps, list(prior))
    torch.manual_seed(seed)
    keys = sorted(inputs)
    data = torch.utils.data.TensorDataset(*(inputs[k] for k in keys), torch.as_tensor(labels))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size,
                                         generator=torch.Generator().manual_seed(seed))
    where_to = device()
    model.to(where_to).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    with warnings.catch_warnings():  # "secure RNG turned off": the guarantee records it
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=ACCOUNTANT)
    engine.accountant.history = [tuple(h) for h in prior]
    module, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
        max_grad_norm=dp.max_grad_norm, poisson_sampling=True)
    losses, done = [], 0
    try:
        # the embedding layer's inputs need no gradient: torch says so on every step
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        with progress_bar(steps, "training (DP-SGD)", progress) as advance:
            while done < steps:
                for *xs, y in loader:
                    optimizer.zero_grad(set_to_none=True)
                    if len(y) == 0:  # an empty Poisson sample: the step is noise alone
                        for p in params:
                            p.grad_sample = p.new_zeros((0, *p.shape))
                    else:
                        xs, y = [x.to(where_to) for x in xs], y.to(where_to)
                        value = loss(module, dict(zip(keys, xs)), y)
                        value.backward()
                        losses.append(value.item())
                    optimizer.step()
                    done += 1
                    advance(1)
                    if done == steps:
                        break
    finally:
        module._close()  # the hooks and per-example gradients go; the weights stay
    model.eval()
    history = [[float(s), float(q), int(k)] for s, q, k in engine.accountant.history]
    guarantee = {"mechanism": "DP-SGD (Opacus): per-example clipping, Poisson sampling, "
                              "Gaussian noise",
                 "privacy_unit": unit,
                 "epsilon": round(spent(history, dp.delta), 4), "delta": dp.delta,
                 "target_epsilon": dp.epsilon, "accountant": ACCOUNTANT,
                 "noise_multiplier": noise, "sample_rate": sample_rate, "steps": steps,
                 "max_grad_norm": dp.max_grad_norm, "history": history,
                 # Opacus's secure mode needs torchcsprng; the noise comes from torch's PRNG
                 "secure_rng": False}
    if total_steps is not None:
        guarantee["planned_steps"] = total_steps
    metrics = {"train_loss": sum(losses) / len(losses) if losses else float("nan"),
               "train_steps": float(steps)}
    return metrics, guarantee


def pate_guarantee(examples: int, teachers: int, answered: int, *, sigma: float,
                   threshold: float | None, threshold_sigma: float | None,
                   delta: float) -> dict[str, Any]:
    """The guarantee of a (Confident-)GNMax consensus over ``examples`` proxy examples, from
    dp-accounting's RDP accountant, data-independent: every example is counted as asked
    (its threshold check, Gaussian with sensitivity 1) and answered (the noisy vote counts:
    L2 sensitivity sqrt(2), so a Gaussian mechanism of noise multiplier sigma / sqrt(2)),
    whatever the votes were. The unit is one teacher: one bundle."""
    from dp_accounting import dp_event, rdp

    accountant = rdp.RdpAccountant()
    if threshold is not None:
        accountant.compose(dp_event.SelfComposedDpEvent(
            dp_event.GaussianDpEvent(threshold_sigma), examples))
    accountant.compose(dp_event.SelfComposedDpEvent(
        dp_event.GaussianDpEvent(sigma / math.sqrt(2)), examples))
    return {"mechanism": "Confident-GNMax (PATE, Papernot et al. 2018)" if threshold is not None
            else "GNMax (PATE, Papernot et al. 2018)",
            "privacy_unit": "one teacher bundle: everything one institution trained its "
                            "specialist on, when each sends one bundle (fd train-specialist on "
                            "M disjoint parts of its data sends M and protects one part)",
            "epsilon": round(float(accountant.get_epsilon(delta)), 4), "delta": delta,
            "accountant": "rdp (dp-accounting), data-independent",
            "sigma": sigma, "threshold": threshold, "threshold_sigma": threshold_sigma,
            "teachers": teachers, "examples": examples, "answered": answered}


def pate_sigma(epsilon: float, examples: int, delta: float = 1e-5,
               threshold_ratio: float | None = 2.0) -> float:
    """The smallest GNMax noise (to 0.1%) whose data-independent guarantee over ``examples``
    stays within ``epsilon``, the threshold check's noise being ``threshold_ratio`` times it
    (None: no threshold)."""
    def eps(sigma: float) -> float:
        t = None if threshold_ratio is None else 1.0
        return pate_guarantee(examples, 1, 0, sigma=sigma, threshold=t,
                              threshold_sigma=None if t is None else threshold_ratio * sigma,
                              delta=delta)["epsilon"]

    found = smallest_noise(eps, epsilon)
    if found is None:
        raise PrivacyError(f"no vote noise below 1e4 reaches epsilon {epsilon:g} over "
                           f"{examples} examples")
    return found


def lm_unit(blocks) -> str:
    """The privacy unit of DP-SGD on a causal LM's :class:`~fdcli.lm.TextBlocks` (one
    training block, which under DP never holds two documents)."""
    if blocks.chat:
        return "one instruction example (prompt and response) of the institution's data"
    if not blocks.packing:
        return (f"one document of the institution's data (truncated to {blocks.max_length} "
                "tokens)")
    return (f"one block of at most {blocks.max_length} tokens of one document of the "
            "institution's data (no block holds two documents; a document cut into k blocks "
            "is protected as a group of k, by group privacy)")


def private_lm_fit(lm, blocks: list, made, dp: DPSettings, prior: list[list[float]] = (),
                   *, epochs: float, learning_rate: float, batch_size: int, seed: int,
                   progress: bool = True) -> tuple[dict[str, float], dict[str, Any]]:
    """DP-SGD on a causal LM (:class:`~fdcli.lm.LanguageModel`, with or without an adapter)
    over token ``blocks`` (from ``made``, their :class:`~fdcli.lm.TextBlocks`): each block
    one example, its loss the mean next-token cross-entropy over its rows
    (:func:`next_token_loss`). Positions go in explicitly, one row per example: a position
    embedding fed one row for the whole batch (GPT-2's) has no per-example gradient."""
    from .lm import pad_blocks

    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batch = pad_blocks(blocks, pad)
    ids = batch["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"],
              "position_ids": torch.arange(ids.shape[1]).expand_as(ids).contiguous()}
    targets = batch["next_ids"].masked_fill(~batch["row_mask"], -100)
    metrics, guarantee = private_fit(
        lm.model, inputs, targets, epochs=epochs, learning_rate=learning_rate,
        batch_size=batch_size, seed=seed, dp=dp, prior=prior, where=lm.architecture,
        progress=progress, loss=next_token_loss(lm.vocab_size), unit=lm_unit(made))
    guarantee["blocks_per_document"] = made.blocks_per_document
    return metrics, guarantee
