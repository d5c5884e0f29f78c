"""What one institution does in a round, without Flower: train (or update) its specialist and
emit its bundle, through the same library functions as ``fd train-specialist`` and ``fd
emit-logits``. The ClientApp (:mod:`fdcli.flower.client_app`) calls :func:`play_round`.

Files live under the institution's ``work`` folder, one folder per run and round::

    WORK/run-RUN/round-R/specialist   the model after round R (none in round 1 for an
                                      institution that brings its trained ``specialist``)
    WORK/run-RUN/round-R/bundle       its bundle, the one sent to the coordinator
    WORK/run-RUN/round-R/consensus    the consensus received for round R (R > 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import FdError
from .settings import STAGES, NodeSettings, stage_options


def round_folder(node: NodeSettings, run_id: int, r: int) -> Path:
    return node.work / f"run-{run_id}" / f"round-{r}"


def play_round(node: NodeSettings, config: Mapping[str, Any], run_id: int, r: int,
               consensus: Path | None = None) -> Path:
    """Round ``r`` of run ``run_id`` for this institution: round 1 trains a specialist from
    ``node.model`` on ``node.data`` (or takes ``node.specialist``, trained already); a later
    round updates round r-1's specialist from its data and the ``consensus`` (a bundle folder
    already on disk), as ``fd train-specialist --teacher`` does. Then the bundle on
    ``node.proxy``. Returns the bundle folder."""
    from ..bundle.signing import load_private_key, load_trusted_keys
    from ..cli.dispatch import library_options
    from ..tasks import get_task

    task = get_task(str(config["task"]))
    where = "run config sent by the coordinator"
    options = stage_options(task.name, config, where, allowed=("train", "emit"))
    for prefix, values in stage_options(task.name, node.overrides, "node config",
                                        allowed=("train", "emit")).items():
        options[prefix].update(values)
    sign_key = load_private_key(node.sign_key) if node.sign_key else None
    folder = round_folder(node, run_id, r)
    specialist, bundle = folder / "specialist", folder / "bundle"
    common = dict(client_id=node.client_id, seed=int(config.get("seed", 0)),
                  sign_key=sign_key, progress=False)
    if "labels" in task.command(STAGES["train"]).options:
        options["train"]["labels"] = config.get("labels") or None
    train = library_options(task, STAGES["train"], options["train"])
    if r == 1:
        model = node.model
    else:
        declared = task.command(STAGES["train"]).options
        if "teacher" not in declared:
            raise FdError(f"round {r}: fd train-specialist --task {task.name} cannot digest a "
                          f"consensus (--teacher); run this task with rounds = 1")
        if consensus is None:
            raise FdError(f"round {r}: the coordinator sent no consensus")
        model = round_folder(node, run_id, r - 1) / "specialist"
        if r == 2 and node.specialist is not None:
            model = node.specialist
        if not model.is_dir():
            raise FdError(f"round {r}: {model} is missing: this institution did not take part "
                          f"in round {r - 1} of run {run_id}")
        train.update(teacher=consensus, proxy=node.proxy,
                     digest_weight=float(config.get("digest-weight", 0.2)),
                     schedule=str(config.get("schedule", "mixed")),
                     temperature=float(config.get("temperature", 2.0)),
                     trusted_keys=load_trusted_keys(node.trusted_keys)
                     if node.trusted_keys else None)
        if config.get("round-epochs") is not None:
            train["epochs"] = float(config["round-epochs"])
    if r == 1 and node.specialist is not None:  # trained already: emit from it
        specialist = node.specialist
    else:
        task.function(STAGES["train"])(node.data, model, specialist, **{**train, **common})
    emit = library_options(task, STAGES["emit"], options["emit"])
    task.function(STAGES["emit"])(specialist, node.proxy, bundle, **{**emit, **common})
    return bundle
