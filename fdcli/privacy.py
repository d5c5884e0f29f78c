"""Membership-inference attacks: how much a model's outputs reveal about who trained it.

Pure functions over per-example losses (no I/O, no models):

- **loss threshold** (Yeom et al. 2018): an example is called a member when the target model's
  loss on it is low; the score is ``-loss``.
- **reference** (population/reference attack in the style of Privacy Meter): the target's loss
  is compared with the loss that reference models, trained on population data that excludes
  the example, give the same example; the score is ``mean reference loss - target loss``, so an
  example that is merely easy does not look like a member.

Each attack reports the ROC AUC and the true-positive rate at 1% and at 0.1% false-positive
rate, computed with scikit-learn over members (label 1) and non-members (label 0). An AUC near
0.5 means the attack cannot tell them apart.

Non-members can carry weights (:func:`label_matched_weights`): when a client's members come
from a skewed label distribution and the held-out examples do not, weighting the held-out
examples to the members' label mix keeps the attack from scoring the label shift instead of
membership.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def label_matched_weights(member_labels: Sequence[int], nonmember_labels: Sequence[int]
                          ) -> np.ndarray:
    """A weight per non-member, ``share of its label among members / share among
    non-members``, so that the weighted non-members have the members' label mix (labels the
    members lack get weight 0)."""
    m = np.asarray(member_labels, dtype=np.int64)
    n = np.asarray(nonmember_labels, dtype=np.int64)
    size = int(max(m.max(initial=0), n.max(initial=0))) + 1
    pm = np.bincount(m, minlength=size) / max(len(m), 1)
    pn = np.bincount(n, minlength=size) / max(len(n), 1)
    w = pm[n] / pn[n]
    if not w.sum() > 0:
        raise ValueError("no non-member shares a label with the members; label matching "
                         "needs held-out examples of the members' labels")
    return w


def attack_metrics(member_scores: Sequence[float], nonmember_scores: Sequence[float],
                   nonmember_weights: Sequence[float] | None = None) -> dict[str, float]:
    """AUC and TPR at 1% / 0.1% FPR of scores where higher means "member"; non-members
    weighted by ``nonmember_weights`` when given."""
    from sklearn.metrics import roc_auc_score, roc_curve

    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    if len(m) == 0 or len(n) == 0:
        raise ValueError(f"a membership-inference attack needs members and non-members; got "
                         f"{len(m)} and {len(n)}")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("attack scores must be finite")
    w = np.ones(len(n)) if nonmember_weights is None else \
        np.asarray(nonmember_weights, dtype=np.float64)
    if w.shape != n.shape or not (w >= 0).all() or not w.sum() > 0:
        raise ValueError(f"non-member weights must be {len(n)} non-negative numbers, not all 0")
    y = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    s = np.concatenate([m, n])
    weights = np.concatenate([np.ones(len(m)), w * len(n) / w.sum()])
    fpr, tpr, _ = roc_curve(y, s, sample_weight=weights)

    def tpr_at(limit: float) -> float:
        ok = fpr <= limit
        return float(tpr[ok].max()) if ok.any() else 0.0

    return {"auc": float(roc_auc_score(y, s, sample_weight=weights)),
            "tpr_at_1pct_fpr": tpr_at(0.01), "tpr_at_01pct_fpr": tpr_at(0.001),
            "members": int(len(m)), "nonmembers": int(len(n)),
            "nonmembers_effective": float(w.sum() ** 2 / (w ** 2).sum())}


def loss_threshold_attack(member_losses: Sequence[float], nonmember_losses: Sequence[float],
                          nonmember_weights: Sequence[float] | None = None
                          ) -> dict[str, float]:
    """The loss-threshold attack: score = -loss."""
    return attack_metrics(-np.asarray(member_losses, dtype=np.float64),
                          -np.asarray(nonmember_losses, dtype=np.float64), nonmember_weights)


def reference_attack(member_losses: Sequence[float], nonmember_losses: Sequence[float],
                     reference_member_losses: Sequence[Sequence[float]],
                     reference_nonmember_losses: Sequence[Sequence[float]],
                     nonmember_weights: Sequence[float] | None = None) -> dict[str, float]:
    """The reference attack: score = mean over reference models of their loss on the example,
    minus the target's loss. ``reference_*_losses`` are ``[models][examples]``."""
    ref_m = np.asarray(reference_member_losses, dtype=np.float64)
    ref_n = np.asarray(reference_nonmember_losses, dtype=np.float64)
    m = np.asarray(member_losses, dtype=np.float64)
    n = np.asarray(nonmember_losses, dtype=np.float64)
    if ref_m.ndim != 2 or ref_m.shape[1] != len(m) or ref_n.shape != (len(ref_m), len(n)):
        raise ValueError(f"reference losses must be [models, examples] matching the target's "
                         f"{len(m)} members and {len(n)} non-members; got {list(ref_m.shape)} "
                         f"and {list(ref_n.shape)}")
    return attack_metrics(ref_m.mean(0) - m, ref_n.mean(0) - n, nonmember_weights)
