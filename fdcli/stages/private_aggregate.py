"""What ``fd aggregate`` does for differential privacy: the checked settings of rule
``gnmax`` (PATE's noisy vote, :func:`fdcli.rules.gnmax`) and the guarantee its consensus
records, and what it says of DP clients' bundles (docs/privacy.md). No I/O."""

from __future__ import annotations

import torch

from ..errors import FdError


def gnmax_settings(rule, sigma, threshold, threshold_sigma, delta, sharpen, seed):
    """The checked parameters of rule ``gnmax`` (None for any other rule)."""
    import secrets

    if rule != "gnmax":
        return None
    if sigma is None or not sigma > 0:
        raise ValueError(f"rule 'gnmax' needs dp_sigma > 0 (the vote noise), got {sigma}")
    if threshold_sigma is not None and threshold is None:
        raise ValueError("dp_threshold_sigma applies with dp_threshold (Confident-GNMax)")
    if threshold is not None:
        threshold_sigma = 2 * sigma if threshold_sigma is None else threshold_sigma
        if not threshold_sigma > 0:
            raise ValueError(f"dp_threshold_sigma must be > 0, got {threshold_sigma}")
    if not 0 < delta < 1:
        raise ValueError(f"dp_delta must be in (0, 1), got {delta}")
    if sharpen is not None:
        raise ValueError("rule 'gnmax' answers one label per example; sharpening does not "
                         "apply")
    generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    return {"sigma": sigma, "threshold": threshold, "threshold_sigma": threshold_sigma,
            "generator": generator, "delta": delta, "seeded": seed is not None}



def pate_record(writer, config, teachers: int, examples: int, answered: int) -> None:
    """The consensus's guarantee, in its manifest; a consensus that answered nothing is
    refused."""
    from ..dp import pate_guarantee

    if not answered:
        raise FdError(f"rule 'gnmax': none of the {examples} examples cleared the threshold "
                      f"{config['threshold']:g}; lower --dp-threshold or --dp-threshold-sigma")
    writer.update_config(privacy={**pate_guarantee(
        examples, teachers, answered, sigma=config["sigma"], threshold=config["threshold"],
        threshold_sigma=config["threshold_sigma"], delta=config["delta"]),
        "noise": config["noise"]})



def guarantee(reader) -> dict | None:
    """A DP client's guarantee, as the consensus's provenance repeats it."""
    found = reader.manifest.producer.config.get("privacy")
    if not isinstance(found, dict):
        return None
    return {k: found.get(k) for k in ("epsilon", "delta", "privacy_unit", "mechanism")}



def dp_hint(reader) -> str:
    """Why a DP model's bundle declares no counts."""
    if not reader.manifest.producer.config.get("privacy"):
        return ""
    return (" (a bundle of a DP model declares neither counts nor histogram: they are outside "
            "its guarantee; use confidence, mean, median or trimmed-mean)")
