"""The ClientApp: one per institution (SuperNode). On each round's ``train`` message it
writes the consensus it received (from round 2 on) into its work folder, plays the round
(:func:`fdcli.flower.institution.play_round`) and replies with its bundle's files."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from .institution import play_round, round_folder  # noqa: E402
from .settings import NodeSettings  # noqa: E402
from .wire import folder_to_record, record_to_folder  # noqa: E402

app = ClientApp()


@app.train()
def train(message: Message, context) -> Message:
    node = NodeSettings.from_config(context.node_config)
    config = dict(message.content.config_records["config"])
    r = int(config["round"])
    consensus = None
    if "consensus" in message.content.array_records:
        consensus = record_to_folder(message.content.array_records["consensus"],
                                     round_folder(node, context.run_id, r) / "consensus",
                                     "the coordinator's consensus")
    bundle = play_round(node, config, context.run_id, r, consensus)
    content = RecordDict({"bundle": folder_to_record(bundle),
                          "fd": ConfigRecord({"round": r})})
    return Message(content, reply_to=message)
