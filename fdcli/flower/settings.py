"""The Flower app's configuration, read the Flower way and checked the fd way.

The run configuration (``[tool.flwr.app.config]`` in the app's ``pyproject.toml``, overridden
with ``flwr run --run-config``) holds what the coordinator decides for everyone::

    task = "classification"     # any task of fd's registry
    rounds = 2                  # round 1 is one-shot; later rounds send the consensus back
    rule = "confidence"         # any fd aggregation rule the task declares
    min-clients = 2             # fewer bundles in a round stops the run
    round-timeout = 600         # seconds a round waits for the institutions' bundles
    out = "fd-run"              # the coordinator's run folder (on the SuperLink's machine)
    proxy = "proxy"             # the proxy set, as the coordinator sees it
    student = "student.json"    # the student: a config file or a model folder
    train.epochs = 3            # any option of the task's train-specialist ...
    emit.encoding = "topk"      # ... emit-logits, aggregate and distill, by library name
    aggregate.trim = 0.2        #     (dashes or underscores)
    distill.epochs = 3

Each SuperNode's ``--node-config`` says where that institution keeps its files:
``data`` (its private training data), ``proxy`` (its copy of the proxy set), ``model`` (a
model config file or folder to start from: institutions may bring different architectures)
and ``work`` (its own folder for specialists, bundles and consensus), with optional
``specialist`` (a model folder the institution trained already: round 1 emits from it
instead of training), ``client-id``, ``sign-key`` (a private key file: its bundles carry
OpenSSF ``model.sig``), ``trusted-keys`` (a folder: the consensus must be signed by one of
them), and ``train.X`` / ``emit.X`` keys that override the run's options for this
institution only (a tokenizer path, a batch size its machine can hold).

An option a task's command does not take is refused by name, as on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import FdError

#: stage prefixes of the run configuration and the fd command each one configures
STAGES = {"train": "train-specialist", "emit": "emit-logits", "aggregate": "aggregate",
          "distill": "distill"}
#: options the app sets itself, which a configuration may not
OWN = frozenset({"out", "overwrite", "progress", "client_id", "teacher", "proxy", "sign_key",
                 "trusted_keys", "seed", "labels", "rule"})
SERVER_KEYS = {"task": "classification", "rounds": 1, "rule": "confidence", "min-clients": 1,
               "round-timeout": 600.0, "out": None, "proxy": None, "student": None,
               "seed": 0, "labels": "", "digest-weight": 0.2, "schedule": "mixed",
               "round-epochs": None, "round-distill-epochs": None,
               "max-bundle-bytes": 1 << 30, "sign-key": "", "trusted-keys": ""}
NODE_KEYS = ("data", "proxy", "model", "work", "client-id", "sign-key", "trusted-keys",
             "specialist")


def stage_options(task: str, config: Mapping[str, Any], where: str,
                  allowed: tuple[str, ...] = tuple(STAGES)) -> dict[str, dict[str, Any]]:
    """The ``prefix.option`` keys of ``config`` (other keys are left alone) as library
    keywords per stage, each checked against what ``task``'s command declares; a prefix not
    in ``allowed`` is refused."""
    from ..tasks import get_task

    spec = get_task(task)
    out: dict[str, dict[str, Any]] = {p: {} for p in allowed}
    for key, value in config.items():
        prefix, dot, name = key.partition(".")
        if not dot or prefix not in STAGES:
            continue
        if prefix not in allowed:
            raise FdError(f"{where}: {key!r} cannot be set here (only "
                          f"{', '.join(p + '.*' for p in allowed)})")
        option = name.replace("-", "_")
        command = spec.command(STAGES[prefix])
        if option in OWN or option not in command.options:
            raise FdError(f"{where}: {key!r}: fd {STAGES[prefix]} --task {task} has no option "
                          f"{option!r} that a configuration may set (see fd {STAGES[prefix]} "
                          f"--help)")
        out[prefix][option] = value
    return out


def _unknown(config: Mapping[str, Any], known, where: str) -> None:
    foreign = sorted(k for k in config if k not in known and k.partition(".")[0] not in STAGES)
    if foreign:
        raise FdError(f"{where}: unknown key(s) {', '.join(map(repr, foreign))}; expected "
                      f"{', '.join(known)} or stage options (train.*, emit.*, aggregate.*, "
                      f"distill.*)")


@dataclass
class ServerSettings:
    """The coordinator's settings, from the run configuration."""

    task: str
    rounds: int
    rule: str
    min_clients: int
    round_timeout: float
    out: Path
    proxy: Path
    student: Path
    seed: int
    labels: str  # the federation's label names, comma-separated, as configured
    digest_weight: float
    schedule: str
    round_epochs: float | None
    round_distill_epochs: float | None
    max_bundle_bytes: int
    sign_key: Path | None
    trusted_keys: Path | None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ServerSettings":
        where = "run config"
        _unknown(config, SERVER_KEYS, where)
        values = {**SERVER_KEYS, **{k: v for k, v in config.items() if k in SERVER_KEYS}}
        for key in ("out", "proxy", "student"):
            if not values[key]:
                raise FdError(f"{where}: {key!r} is required (a path on the coordinator's "
                              f"machine); set it in [tool.flwr.app.config] or with flwr run "
                              f"--run-config '{key}=\"...\"'")
        for key in ("rounds", "min-clients"):
            if not isinstance(values[key], int) or values[key] < 1:
                raise FdError(f"{where}: {key!r} must be a whole number >= 1, got "
                              f"{values[key]!r}")
        stages = stage_options(values["task"], config, where)
        return cls(task=values["task"], rounds=values["rounds"], rule=values["rule"],
                   min_clients=values["min-clients"],
                   round_timeout=float(values["round-timeout"]),
                   out=Path(values["out"]), proxy=Path(values["proxy"]),
                   student=Path(values["student"]), seed=int(values["seed"]),
                   labels=str(values["labels"]),
                   digest_weight=float(values["digest-weight"]), schedule=values["schedule"],
                   round_epochs=values["round-epochs"],
                   round_distill_epochs=values["round-distill-epochs"],
                   max_bundle_bytes=int(values["max-bundle-bytes"]),
                   sign_key=Path(values["sign-key"]) if values["sign-key"] else None,
                   trusted_keys=Path(values["trusted-keys"]) if values["trusted-keys"]
                   else None, stages=stages)

    def client_config(self) -> dict[str, Any]:
        """What every institution needs to know, sent with each round's message."""
        from ..tasks import get_task

        distilling = {**get_task(self.task).command("distill").defaults(),
                      **self.stages["distill"]}
        flat: dict[str, Any] = {"task": self.task, "seed": self.seed,
                                "labels": self.labels,
                                "digest-weight": self.digest_weight, "schedule": self.schedule,
                                "temperature": float(distilling.get("temperature") or 2.0)}
        if self.round_epochs is not None:
            flat["round-epochs"] = float(self.round_epochs)
        for prefix in ("train", "emit"):
            flat.update({f"{prefix}.{k}": v for k, v in self.stages[prefix].items()})
        return flat


@dataclass
class NodeSettings:
    """One institution's settings, from its SuperNode's ``--node-config``."""

    data: Path
    proxy: Path
    model: Path
    work: Path
    client_id: str | None
    sign_key: Path | None
    trusted_keys: Path | None
    overrides: dict[str, Any]
    specialist: Path | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "NodeSettings":
        where = "node config"
        known = NODE_KEYS + ("partition-id", "num-partitions")  # Flower's simulation keys
        _unknown(config, known, where)
        missing = [k for k in ("data", "proxy", "model", "work") if not config.get(k)]
        if missing:
            raise FdError(f"{where}: {', '.join(map(repr, missing))} required: start the "
                          f"SuperNode with --node-config 'data=\"...\" proxy=\"...\" "
                          f"model=\"...\" work=\"...\"'")
        overrides = {k: v for k, v in config.items() if k.partition(".")[0] in STAGES}

        def path(key):
            return Path(config[key]) if config.get(key) else None

        return cls(data=Path(config["data"]), proxy=Path(config["proxy"]),
                   model=Path(config["model"]), work=Path(config["work"]),
                   client_id=config.get("client-id") or None, sign_key=path("sign-key"),
                   trusted_keys=path("trusted-keys"), overrides=overrides,
                   specialist=path("specialist"))
