"""The evidence the token-level simulations (causal-lm, seq2seq) report beside the student:
a Flower FedAvg baseline of the student architecture on the institutions' own examples (fp32
and 8-bit, bytes counted on the wire), the bytes FedAvg needs to reach a perplexity, and
membership-inference attacks on any model.

A :class:`TokenTask` says how to build, train and score the student architecture; an example
is whatever its ``fit`` and ``losses`` take (a block of token ids, or a source/target pair).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..lm import LanguageModel
from ..results import Score


def check_setup(catalogue: dict, architectures, student: str, num_clients: int) -> None:
    """Refuse architectures the simulation's ``catalogue`` lacks, and fewer than one client."""
    unknown = [a for a in [*architectures, student] if a not in catalogue]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; expected {sorted(catalogue)}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")


@dataclass
class TokenTask:
    """How a simulation builds, trains and scores its student architecture."""

    load: Callable[[], LanguageModel]                     # a fresh student (same seed)
    fit: Callable[[LanguageModel, list, float, int], Any]  # (model, examples, epochs, seed)
    losses: Callable[[LanguageModel, list], list[float]]  # mean NLL per example (nats)
    perplexity: Callable[[LanguageModel], float]          # the test figure FedAvg's curve tracks


def unique_state(model) -> dict:
    """The state dict without tied copies (GPT-2's and T5's output layer is their input
    embedding): what a FedAvg client sends. It loads back with ``strict=False``."""
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            state[name] = tensor
    return state


def fedavg(task: TokenTask, clients: Sequence[list], *, bits: int, rounds: int,
           local_epochs: float, seed: int = 0) -> tuple[LanguageModel, dict[str, Any]]:
    """Flower FedAvg of the student architecture over ``clients`` (each a list of examples);
    the global model's test perplexity is taken after every round. Returns the final model and
    ``{"curve": [{round, uploaded_bytes, total_bytes, perplexity}], "traffic": ...}``."""
    from ..fedavg import bytes_per_round, run_fedavg

    server = task.load()

    def train_fn(partition: int, state, config):
        m = task.load()
        load_unique(m.model, state)
        task.fit(m, list(clients[partition]), local_epochs,
                 seed + int(config.get("server-round", 0)))
        return unique_state(m.model), len(clients[partition]), {}

    def evaluate_fn(server_round: int, state):
        load_unique(server.model, state)
        return {"perplexity": task.perplexity(server)}

    run = run_fedavg({k: v.clone() for k, v in unique_state(server.model).items()}, train_fn,
                     num_clients=len(clients), num_rounds=rounds, bits=bits, seed=seed,
                     evaluate_fn=evaluate_fn)
    load_unique(server.model, run.state)
    traffic = bytes_per_round(run.traffic)
    by_round = {t["round"]: t for t in traffic}
    up = total = 0
    curve = []
    for r in run.rounds:
        t = by_round.get(r["round"], {"up_bytes": 0, "down_bytes": 0})
        up += t["up_bytes"]
        total += t["up_bytes"] + t["down_bytes"]
        curve.append({"round": r["round"], "uploaded_bytes": up, "total_bytes": total,
                      "perplexity": round(r["perplexity"], 3)})
    return server, {"curve": curve, "traffic": traffic, "bits": bits, "rounds": rounds,
                    "local_epochs": local_epochs}


def load_unique(model, state: dict) -> None:
    """Load :func:`unique_state`'s dict; every name it lacks must be a tied copy."""
    tied = set(model.state_dict()) - set(unique_state(model))
    missing = set(model.load_state_dict(state, strict=False).missing_keys) - tied
    if missing:
        raise RuntimeError(f"the FedAvg state lacks {sorted(missing)}")


def teacher_next_tokens(bundle, blocks: Sequence[Sequence[int]]) -> dict[str, float]:
    """How well a token consensus predicts the text it was made on: its ``perplexity`` (exp
    of the mean NLL it gives each position's actual next token, the tail spread evenly over
    the ids it did not keep) and ``accuracy`` (how often its most likely id is that token).
    ``blocks``: the proxy's token blocks (raw text; a block's last position has no next
    token and is not counted). A coordinator cannot compute this for instruction data; a
    simulation can for its proxy text."""
    import torch

    from ..bundle import read_bundle
    from ..poison import TOKEN_ROWS_AT_ONCE

    nll, hits, count = 0.0, 0, 0
    for block in read_bundle(bundle).iter_blocks():
        for part in block.chunks(TOKEN_ROWS_AT_ONCE):
            logp = part.dense()
            offsets = part.row_offsets.tolist()
            rows, targets = [], []
            for j, e in enumerate(part.example_ids.tolist()):
                ids = blocks[e]
                rows += range(offsets[j], offsets[j] + len(ids) - 1)
                targets += ids[1:]
            rows_t, targets_t = torch.tensor(rows), torch.tensor(targets)
            nll -= float(logp[rows_t, targets_t].double().sum())
            hits += int((logp[rows_t].argmax(-1) == targets_t).sum())
            count += len(targets)
    return {"perplexity": math.exp(nll / count), "accuracy": hits / count}


def bytes_to_perplexity(curve: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """The first point of a curve at or below ``target`` perplexity, and the bytes (up and
    down) sent until then."""
    for point in curve:
        if point["perplexity"] <= target:
            return {"reached": True, "round": point["round"], "bytes": point["total_bytes"]}
    return {"reached": False, "round": None, "bytes": curve[-1]["total_bytes"] if curve else 0}


def token_scores(results: dict[str, Any], seed: int) -> list[Score]:
    """The typed scores of a token simulation (:mod:`fdcli.results`): each student (method
    ``fd``; its rule, or for seq2seq the targets it learnt), the proxy-only and centralized
    models and FedAvg, with their scalar metrics (a seq2seq model's are its scores on the
    union of the domains)."""
    def flat(entry: dict[str, Any]) -> dict[str, Any]:
        return {**entry, **entry.get("union", {})}

    sent = results["bytes"].get("total", results["bytes"]["uploaded_total"])
    if "students_by_rule" in results:  # the main rule's is the last round's student
        rule, final = results["config"]["rule"], results["student"]
        students = [({"rule": r, **({"round": final["round"]} if r == rule else {})},
                     final if r == rule else s, r == rule)
                    for r, s in results["students_by_rule"].items()]
    else:
        final = results["student"]
        students = [({"targets": name.removesuffix("_targets"),
                      **({"round": final["round"]} if name == "proxy_targets" else {})},
                     final if name == "proxy_targets" else s, name == "proxy_targets")
                    for name, s in results["students"].items()]
    out = [Score.one("fd", seed, flat(s), variant=variant, sent=sent if main else None)
           for variant, s, main in students]
    out += [Score.one(name, seed, flat(results[name])) for name in ("proxy_only", "centralized")]
    out += [Score.one(name, seed, flat(b), sent=b.get("total_bytes"))
            for name, b in results.get("baselines", {}).items()]
    return out


def bytes_report(records: Sequence[dict[str, Any]], curves: dict[str, list], target: float
                 ) -> dict[str, Any]:
    """The results' ``bytes`` (fd's rounds, :mod:`~fdcli.stages.token_rounds`: the bundles
    each client uploaded over them, the consensus each downloaded, the total both ways) and
    ``bytes_to_student_perplexity`` (each FedAvg curve's bytes, up and down, to
    ``target``)."""
    per_client = [sum(col) for col in zip(*(r["uploaded_per_client"] for r in records))]
    up = sum(r["uploaded_bytes"] for r in records)
    down = sum(r["downloaded_bytes"] for r in records)
    return {"bytes": {"uploaded_per_client": per_client, "uploaded_total": up,
                      "downloaded_per_client": down // max(len(per_client), 1),
                      "downloaded_total": down, "total": up + down},
            "bytes_to_student_perplexity": {
                "target_perplexity": target,
                **{name: bytes_to_perplexity(c, target) for name, c in curves.items()}}}


def sample(examples: Sequence, n: int, seed: int = 0) -> list:
    """At most ``n`` of ``examples``, drawn without replacement, in their original order."""
    if len(examples) <= n:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def attacks(task: TokenTask, model: LanguageModel, members: list, nonmembers: list,
            reference: LanguageModel) -> dict[str, Any]:
    """The loss-threshold attack (score: minus the example's mean NLL) and the reference
    attack (the reference model's NLL minus the target's) on ``members`` against
    ``nonmembers``: AUC and TPR at 1% and 0.1% FPR."""
    from ..privacy import loss_threshold_attack, reference_attack

    m, n = task.losses(model, members), task.losses(model, nonmembers)
    rm, rn = task.losses(reference, members), task.losses(reference, nonmembers)
    found = {k: rounded(v) for k, v in loss_threshold_attack(m, n).items()}
    found["reference"] = {k: rounded(v) for k, v in reference_attack(m, n, [rm], [rn]).items()}
    return found


def rounded(value):
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value


def fedavg_baselines(task: TokenTask, clients: Sequence[list], root, *, rounds: int,
                     local_epochs: float, seed: int, score: Callable[[LanguageModel], dict],
                     meta: dict[str, Any], log: Callable[[str], None] = print
                     ) -> tuple[dict[str, Any], dict[str, list]]:
    """FedAvg at fp32 (``fedavg``) and with 8-bit weights (``fedavg_8bit``), each model saved
    to ``root/<name>`` with ``meta`` and scored by ``score``; returns (results, curves). No
    rounds, no baselines."""
    from ..lm import save_lm

    results, curves = {}, {}
    for bits, name in ((32, "fedavg"), (8, "fedavg_8bit")):
        if rounds < 1:
            break
        log(f"{name}: {rounds} Flower rounds of {local_epochs:g} local epochs")
        m, run = fedavg(task, clients, bits=bits, rounds=rounds, local_epochs=local_epochs,
                        seed=seed)
        out = root / name
        out.mkdir(parents=True)
        save_lm(m, out, {**meta, "stage": "fedavg", "bits": bits, "rounds": rounds,
                         "local_epochs": local_epochs})
        results[name] = {**score(m), "bits": bits, "rounds": rounds,
                         "local_epochs": local_epochs,
                         "total_bytes": run["curve"][-1]["total_bytes"]}
        curves[name] = run["curve"]
    return results, curves


def privacy_report(task: TokenTask, load: Callable[[Any], LanguageModel],
                   private: Sequence[list], held_out: Sequence[list],
                   specialists: Sequence[Any], pooled: dict[str, Any], reference: Any, *,
                   per_set: int = 150, seed: int = 0) -> dict[str, Any]:
    """Loss and reference attacks on every model (``load(path)`` opens one). Specialist i's
    members are ``private[i]`` and its non-members ``held_out[i]`` (its domain's held-out
    files); every model in ``pooled`` (name -> path: the student, the baselines) is attacked
    on the union of all clients' members against the union of the held-out sets. Each set
    holds at most ``per_set`` examples (``per_set`` / clients per client in the unions)."""
    ref = load(reference)
    out: dict[str, Any] = {"specialists": []}
    for i, path in enumerate(specialists):
        out["specialists"].append({"client_id": f"client-{i}", **attacks(
            task, load(path), sample(private[i], per_set, seed + i),
            sample(held_out[i], per_set, seed + i), ref)})
    share = max(1, per_set // max(len(private), 1))
    members = [e for i, p in enumerate(private) for e in sample(p, share, seed + i)]
    nonmembers = [e for i, p in enumerate(held_out) for e in sample(p, share, seed + i)]
    for name, path in pooled.items():
        out[name] = attacks(task, load(path), members, nonmembers, ref)
    aucs = [s["auc"] for s in out["specialists"]]
    out["specialists_mean_auc"] = round(sum(aucs) / len(aucs), 4) if aucs else None
    return out


def evidence_md(results: dict[str, Any]) -> list[str]:
    """report.md lines for FedAvg's bytes to the student's perplexity and the attacks."""
    lines: list[str] = []
    hits = results.get("bytes_to_student_perplexity", {})
    if len(hits) > 1:
        lines += ["", f"Bytes FedAvg sends (up and down) to reach the student's perplexity "
                      f"({hits['target_perplexity']:.2f}):"]
        lines += [f"- {n}: " + (f"{h['bytes']:,} B (round {h['round']})" if h["reached"]
                                else f"not reached in {h['bytes']:,} B")
                  for n, h in hits.items() if n != "target_perplexity"]
    if "privacy" in results:
        p = results["privacy"]
        named = [(f"specialist {s['client_id']}", s) for s in p["specialists"]]
        named += [(n, p[n]) for n in p if isinstance(p[n], dict) and "auc" in p[n]]
        lines += ["", "Membership inference (AUC of the loss attack / the reference attack; "
                      "TPR at 1% FPR of the loss attack):"]
        lines += [f"- {n}: {a['auc']:.3f} / {a['reference']['auc']:.3f}; "
                  f"{a['tpr_at_1pct_fpr']:.3f}" for n, a in named]
    return lines
