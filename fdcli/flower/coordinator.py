"""The coordinator's side of a federation over Flower: each round, ask every connected
institution for its bundle, admit what ``fd aggregate`` would accept, aggregate, distill the
student, and send the consensus back for the next round. :func:`coordinate` takes any Flower
``Grid``: the Deployment Engine's (the ServerApp, :mod:`fdcli.flower.server_app`) or an
in-process one (tests).

The run folder ``OUT`` holds, per round R::

    OUT/round-R/bundles/node-N   the bundle node N sent (the folder name is the coordinator's)
    OUT/round-R/teacher          the consensus
    OUT/round-R/student          the student after round R
    OUT/flower.json              what each round received, admitted, refused and sent

Nothing an institution sends names a path: bundles are written under names the coordinator
chooses, file names inside a bundle are checked (:mod:`fdcli.flower.wire`), and a bundle
folder is complete or absent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import FdError
from .settings import STAGES, ServerSettings
from .wire import folder_to_record, record_to_folder

TRAIN = "train"  # the Flower message type of a round's request


@dataclass
class Admission:
    """The bundles of one round: those admitted (client id -> folder, in client-id order) and
    those refused (node -> the reason, ``fd aggregate``'s message where it has one)."""

    admitted: dict[str, Path] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    up_bytes: dict[int, int] = field(default_factory=dict)


def message_bytes(message) -> int:
    """Length of ``message`` in Flower's protobuf wire form."""
    from flwr.common.serde import message_to_proto

    return len(message_to_proto(message).SerializeToString())


def admit(candidates: dict[int, Path], trusted: dict | None, admission: Admission) -> None:
    """Check each node's bundle as ``fd verify`` does (every shard, its digest, the signature
    against the trusted keys), then as ``fd aggregate`` does (same task, label space and proxy
    set as the others, not a bundle or a client id already admitted), and admit it, or refuse
    it with the reason (their messages). ``trusted``: the coordinator's trusted keys."""
    from ..bundle import read_bundle, verify_bundle
    from ..errors import BundleError
    from ..stages.aggregate import check_compatible

    readers: list = []
    opened = []
    for node, folder in candidates.items():
        report = verify_bundle(folder, trusted_keys=trusted)
        if not report.ok:
            admission.refused[node] = "; ".join(report.problems)
            continue
        reader = read_bundle(folder)
        opened.append((reader.manifest.producer.client_id or "", node, reader))
    for client_id, node, reader in sorted(opened, key=lambda x: (x[0], x[1])):
        if client_id in admission.admitted:
            admission.refused[node] = (f"{reader.path}: client id {client_id!r} was already sent "
                                       f"by node {admission.nodes[client_id]} this round; each "
                                       f"client's bundle may count only once")
            continue
        try:
            check_compatible([*readers, reader])
        except BundleError as e:
            admission.refused[node] = str(e)
            continue
        readers.append(reader)
        admission.admitted[client_id] = Path(reader.path)
        admission.nodes[client_id] = node


def wait_for_nodes(grid, settings: ServerSettings) -> list[int]:
    """The connected nodes, once at least ``min_clients`` are (or an error after the round
    timeout)."""
    deadline = time.monotonic() + settings.round_timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= settings.min_clients:
            return nodes
        if time.monotonic() > deadline:
            raise FdError(f"only {len(nodes)} institution(s) connected within "
                          f"{settings.round_timeout:g} s; min-clients is "
                          f"{settings.min_clients}")
        time.sleep(1.0)


def ask(grid, nodes: list[int], r: int, settings: ServerSettings, consensus: Path | None,
        trusted: dict | None, folder: Path, log) -> tuple[Admission, int]:
    """Send round ``r``'s request (with the consensus after round 1) to ``nodes``, receive
    their bundles into ``folder/bundles/node-N`` and admit them (:func:`admit`); returns the
    admission and the bytes sent down."""
    from flwr.app import ConfigRecord, Message, RecordDict

    config = ConfigRecord({**settings.client_config(), "round": r, "server-round": r})
    sent = None if consensus is None else folder_to_record(consensus)
    messages, down = [], 0
    for node in nodes:
        content = RecordDict({"config": config})
        if sent is not None:
            content["consensus"] = sent
        message = Message(content, node, TRAIN, group_id=str(r))
        down += message_bytes(message)
        messages.append(message)
    log(f"round {r}: asking {len(nodes)} institution(s) for their bundles")
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    # a reply is the answer of the node its request went to (an error reply for a node that
    # went away comes from the SuperLink itself)
    asked = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}
    admission = Admission()
    candidates = {}
    for reply in replies:
        node = asked.pop(reply.metadata.reply_to_message_id, None)
        if node is None:
            log(f"round {r}: a reply to no request of this round was ignored")
            continue
        received = _receive(reply, node, folder / "bundles" / f"node-{node}", settings,
                            admission)
        if received is not None:
            candidates[node] = received
    for node in asked.values():
        admission.refused[node] = f"no answer within {settings.round_timeout:g} s " \
                                  "(round-timeout)"
    admit(candidates, trusted, admission)
    for node, reason in sorted(admission.refused.items()):
        log(f"round {r}: node {node} left out: {reason}")
    return admission, down


def coordinate(grid, settings: ServerSettings, run_id: int,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``settings.rounds`` rounds over ``grid``; returns (and writes to
    ``OUT/flower.json``) the record of each round."""
    from ..bundle.signing import load_private_key, load_trusted_keys
    from ..cli.dispatch import library_options
    from ..stages.aggregate import aggregate
    from ..tasks import get_task
    from ..stages.distill import distill

    keys = {"sign_key": load_private_key(settings.sign_key) if settings.sign_key else None}
    trusted = load_trusted_keys(settings.trusted_keys) if settings.trusted_keys else None
    task = get_task(settings.task)
    history: list[dict[str, Any]] = []
    record = {"run_id": run_id, "task": settings.task, "rule": settings.rule,
              "rounds": history}
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    consensus = None
    for r in range(1, settings.rounds + 1):
        started = time.perf_counter()
        folder = out / f"round-{r}"
        if folder.exists():
            raise FdError(f"{folder} already exists: choose a fresh run folder (out)")
        nodes = wait_for_nodes(grid, settings)
        admission, down = ask(grid, nodes, r, settings, consensus, trusted, folder, log)
        entry = {"round": r, "nodes": nodes, "down_bytes": down,
                 "up_bytes": sum(admission.up_bytes.values()),
                 "up_bytes_per_node": {str(k): v for k, v in admission.up_bytes.items()},
                 "admitted": {c: admission.nodes[c] for c in admission.admitted},
                 "refused": {str(k): v for k, v in sorted(admission.refused.items())}}
        history.append(entry)
        _write(out / "flower.json", record)
        if len(admission.admitted) < settings.min_clients:
            raise FdError(f"round {r}: {len(admission.admitted)} bundle(s) admitted of "
                          f"{len(nodes)} asked, fewer than min-clients "
                          f"({settings.min_clients}); see {out / 'flower.json'} for why")
        teacher, student = folder / "teacher", folder / "student"
        aggregate(list(admission.admitted.values()), teacher,
                  **{**library_options(task, STAGES["aggregate"],
                                       settings.stages["aggregate"]),
                     "rule": settings.rule, "seed": settings.seed, "progress": False,
                     "trusted_keys": trusted, **keys})
        distilling = library_options(task, STAGES["distill"], settings.stages["distill"])
        source = settings.student if r == 1 else out / f"round-{r - 1}" / "student"
        if r > 1 and settings.round_distill_epochs is not None:
            distilling["epochs"] = float(settings.round_distill_epochs)
        log(f"round {r}: {len(admission.admitted)} bundle(s) aggregated with "
            f"{settings.rule!r}; distilling the student")
        distill(source, settings.proxy, teacher, student,
                **{**distilling, "seed": settings.seed, "progress": False, **keys})
        consensus = teacher
        entry.update(seconds=time.perf_counter() - started, teacher=str(teacher),
                     student=str(student),
                     largest_bundle_bytes=max(admission.up_bytes.values(), default=0))
        _write(out / "flower.json", record)
    return record


def _receive(reply, node: int, target: Path, settings: ServerSettings,
             admission: Admission):
    """The bundle folder ``node``'s reply carries, written to ``target``; None (with the
    reason recorded) for an error reply or a reply that does not hold exactly one bundle."""
    if reply.has_error():
        admission.refused[node] = f"the institution failed: {reply.error.reason}"
        return None
    content = reply.content
    arrays = list(content.array_records.keys())
    admission.up_bytes[node] = message_bytes(reply)
    if arrays != ["bundle"]:
        admission.refused[node] = (f"expected one array record named 'bundle', found "
                                   f"{arrays}")
        return None
    try:
        return record_to_folder(content.array_records["bundle"], target, f"node {node}",
                                settings.max_bundle_bytes)
    except FdError as e:
        admission.refused[node] = str(e)
        return None


def _write(path: Path, record: dict[str, Any]) -> None:
    from ..bundle.shards import write_file_atomic

    write_file_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
