"""FedAvg with Flower, in process: the weight-sharing baseline that federated distillation
is measured against.

Flower's own ``FedAvg`` strategy (``flwr.serverapp.strategy``) drives the rounds; its
messages go through :class:`LocalGrid`, a Flower ``Grid`` that hands each one to a Flower
``ClientApp`` in this process. Every message crosses as Flower's protobuf wire form (the
client reads the bytes the server wrote, and the other way round), and the grid records the
length of each, so the bytes reported are the bytes a deployment would send.

``bits=8`` quantises every floating-point array, down and up, to uint8 with a per-array
offset and scale (:func:`pack` / :func:`unpack`); the strategy averages the dequantised
arrays.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before flwr is imported

from flwr.serverapp import Grid  # noqa: E402

ARRAYS = "arrays"
QPARAMS = "::q"          # suffix of the [offset, scale] array beside a quantised one
SERVER_NODE = 1          # flwr.common.constant.SUPERLINK_NODE_ID


def pack(state: dict[str, torch.Tensor], bits: int = 32):
    """A state dict as a Flower ``ArrayRecord``: as is for ``bits=32``; for ``bits=8`` every
    floating-point tensor becomes uint8 codes plus a float32 ``[offset, scale]`` array."""
    from flwr.app import Array, ArrayRecord

    if bits == 32:
        return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})
    if bits != 8:
        raise ValueError(f"bits must be 32 or 8, got {bits}")
    arrays = {}
    for name, value in state.items():
        x = value.detach().cpu()
        if not x.is_floating_point():
            arrays[name] = Array(x.numpy())
            continue
        x = x.float()
        lo = float(x.min()) if x.numel() else 0.0
        scale = (float(x.max()) - lo) / 255 if x.numel() else 0.0
        codes = torch.zeros_like(x) if scale == 0 else torch.round((x - lo) / scale)
        arrays[name] = Array(codes.to(torch.uint8).numpy())
        arrays[name + QPARAMS] = Array(np.array([lo, scale], dtype=np.float32))
    return ArrayRecord(arrays)


def unpack(record) -> dict[str, torch.Tensor]:
    """The state dict of :func:`pack`'s record (dequantised where it was quantised)."""
    arrays = {k: record[k].numpy() for k in record.keys()}
    state = {}
    for name, value in arrays.items():
        if name.endswith(QPARAMS):
            continue
        q = arrays.get(name + QPARAMS)
        if q is not None:
            state[name] = torch.from_numpy(np.asarray(value.astype(np.float32) * q[1] + q[0]))
        else:
            state[name] = torch.from_numpy(np.array(value))
    return state


def _wire(message):
    """``message`` after a trip through Flower's protobuf wire form, and its length."""
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    data = message_to_proto(message).SerializeToString()
    return message_from_proto(ProtoMessage.FromString(data)), len(data)


@contextlib.contextmanager
def server_identity(run_id: int):
    """Flower builds a message's metadata from the process's task identity; act as the
    server of ``run_id`` while the strategy runs."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SERVER_NODE
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class LocalGrid(Grid):
    """A Flower ``Grid`` whose nodes are one in-process ``ClientApp``, one ``Context`` per
    node (``node_config["partition-id"]`` = the client's index, plus ``node_configs[i]``).
    ``traffic`` holds one entry per delivered message: round, partition, message type, bytes
    down and bytes up. With ``errors_as_replies`` an exception in the ClientApp becomes an
    error reply, as under Flower's engines; otherwise it propagates."""

    def __init__(self, app, num_nodes: int, run_id: int = 1,
                 node_configs: list[dict[str, Any]] | None = None,
                 errors_as_replies: bool = False):
        from flwr.app import Context, RecordDict
        from flwr.supercore.run import Run

        self.app = app
        self._run = Run.create_empty(run_id)
        configs = node_configs or [{} for _ in range(num_nodes)]
        self.contexts = {SERVER_NODE + 1 + i: Context(run_id=run_id, node_id=SERVER_NODE + 1 + i,
                                                      node_config={"partition-id": i,
                                                                   **configs[i]},
                                                      state=RecordDict(), run_config={})
                         for i in range(num_nodes)}
        self.errors_as_replies = errors_as_replies
        self.traffic: list[dict[str, Any]] = []
        self._replies: dict[str, Any] = {}

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        from flwr.app import Message

        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        from uuid import uuid4

        from flwr.app import Message

        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            context = self.contexts[message.metadata.dst_node_id]
            received, down = _wire(message)
            try:
                reply = self.app(received, context)
            except Exception as e:  # as a SuperNode does: the server gets an error reply
                if not self.errors_as_replies:
                    raise
                from flwr.app import Error

                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"),
                                reply_to=received)
            if not isinstance(reply, Message):
                raise TypeError(f"the ClientApp returned {type(reply).__name__}, not a Message")
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            reply, up = _wire(reply)
            config = received.content.config_records.get("config", {})
            self.traffic.append({"round": int(config.get("server-round", 0)),
                                 "partition": context.node_config["partition-id"],
                                 "type": message.metadata.message_type,
                                 "down_bytes": down, "up_bytes": up})
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def _strategy(bits: int, fraction: float, num_clients: int, proximal_mu: float | None = None):
    from flwr.serverapp.strategy import FedAvg, FedProx

    class PackedFedAvg(FedAvg):
        """Flower's FedAvg, sending 8-bit packed arrays and averaging them dequantised."""

        def configure_train(self, server_round, arrays, config, grid):
            return super().configure_train(server_round, pack(unpack(arrays), bits), config,
                                           grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            for r in replies:
                if not r.has_error():
                    r.content[ARRAYS] = pack(unpack(r.content[ARRAYS]), 32)
            return super().aggregate_train(server_round, replies)

    n = max(1, round(fraction * num_clients))
    common = dict(fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=n,
                  min_available_nodes=num_clients, arrayrecord_key=ARRAYS)
    if proximal_mu is not None:
        if bits != 32:
            raise ValueError("FedProx runs with 32-bit arrays only")
        return FedProx(proximal_mu=proximal_mu, **common)
    return (FedAvg if bits == 32 else PackedFedAvg)(**common)


#: ``train_fn(partition, state, config) -> (new state, examples, metrics)`` runs on a client.
TrainFn = Callable[[int, dict[str, torch.Tensor], dict[str, Any]],
                   tuple[dict[str, torch.Tensor], int, dict[str, float]]]


def client_app(train_fn: TrainFn, bits: int = 32):
    """A Flower ``ClientApp`` whose ``train`` unpacks the global arrays, calls ``train_fn``
    for its partition and replies with the packed result, weighted by its example count."""
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(message, context):
        config = dict(message.content.config_records.get("config", {}))
        state, examples, metrics = train_fn(int(context.node_config["partition-id"]),
                                            unpack(message.content.array_records[ARRAYS]),
                                            config)
        content = RecordDict({ARRAYS: pack(state, bits),
                              "metrics": MetricRecord({"num-examples": int(examples),
                                                       **metrics})})
        return Message(content, reply_to=message)

    return app


@dataclass
class FedAvgRun:
    """What :func:`run_fedavg` returns: the final state, per-round global metrics (from
    ``evaluate_fn``) and the grid's per-message traffic."""

    state: dict[str, torch.Tensor]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)


def run_fedavg(initial: dict[str, torch.Tensor], train_fn: TrainFn, *, num_clients: int,
               num_rounds: int, bits: int = 32, fraction: float = 1.0, seed: int = 0,
               evaluate_fn: Callable[[int, dict[str, torch.Tensor]], dict[str, float]] | None
               = None, config: dict[str, Any] | None = None,
               proximal_mu: float | None = None) -> FedAvgRun:
    """Run ``num_rounds`` of Flower FedAvg over ``num_clients`` in-process clients, sampling
    ``fraction`` of them per round. ``evaluate_fn(round, state)`` scores the global model
    after every round (round 0 = the initial model); each round's record also holds the wall
    ``seconds`` and the process's ``cpu_seconds`` since the start (training, transfers and the
    evaluations before it). Rounds' bytes come from the grid. ``proximal_mu`` runs Flower's
    FedProx instead, which sends ``"proximal-mu"`` in each round's config for ``train_fn`` to
    apply."""
    import logging
    import time

    from flwr.app import ConfigRecord, MetricRecord
    from flwr.common.logger import FLOWER_LOGGER

    if num_rounds < 1 or num_clients < 1 or not 0 < fraction <= 1:
        raise ValueError("num_rounds and num_clients must be >= 1 and fraction in (0, 1]")
    grid = LocalGrid(client_app(train_fn, bits), num_clients)
    rounds: list[dict[str, Any]] = []
    started, cpu = time.perf_counter(), time.process_time()

    def on_round(server_round: int, arrays):
        if evaluate_fn is None:
            return None
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        scores = evaluate_fn(server_round, unpack(arrays))
        rounds.append({"round": server_round, "seconds": seconds, "cpu_seconds": cpu_seconds,
                       **scores})
        return MetricRecord({k: float(v) for k, v in scores.items()})

    random.seed(seed)  # Flower samples the round's nodes with the random module
    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel(logging.ERROR)
    try:
        strategy = _strategy(bits, fraction, num_clients, proximal_mu)
        with server_identity(grid.run.run_id):
            result = strategy.start(grid, pack(initial, 32), num_rounds=num_rounds,
                                    train_config=ConfigRecord(config or {}),
                                    evaluate_fn=on_round)
    finally:
        FLOWER_LOGGER.setLevel(level)
    return FedAvgRun(unpack(result.arrays), rounds, grid.traffic)


def bytes_per_round(traffic: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Traffic summed per round: the clients that took part, bytes down and up in all, and
    per client (the largest message each way)."""
    out: dict[int, dict[str, Any]] = {}
    for t in traffic:
        r = out.setdefault(t["round"], {"round": t["round"], "clients": 0, "down_bytes": 0,
                                        "up_bytes": 0, "max_down_bytes_per_client": 0,
                                        "max_up_bytes_per_client": 0})
        r["clients"] += 1
        r["down_bytes"] += t["down_bytes"]
        r["up_bytes"] += t["up_bytes"]
        r["max_down_bytes_per_client"] = max(r["max_down_bytes_per_client"], t["down_bytes"])
        r["max_up_bytes_per_client"] = max(r["max_up_bytes_per_client"], t["up_bytes"])
    return [out[k] for k in sorted(out)]
