"""The largest bundle folder that crosses Flower's Deployment Engine, and how long it takes.

Starts a SuperLink and one SuperNode as separate processes on localhost (insecure mode), and
runs a small Flower app whose ClientApp sends a folder of ``--mib`` MiB (four shard-like
files of random bytes and a manifest) as fd's Flower app sends a bundle
(:func:`fdcli.flower.wire.folder_to_record`), and whose ServerApp writes it back
(:func:`fdcli.flower.wire.record_to_folder`) and compares every file's sha256. Flower splits
each file's array into chunks of at most 5 MiB on its own. Prints JSON: per size, whether it
arrived byte-identical, the seconds from request to written folder, and the peak RSS of the
SuperLink.

    python benchmarks/flower_large_bundle.py --mib 64,512,2048 \
        --out benchmarks/results/flower/large_bundle.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fdcli.flower.local import local_deployment

APP = '''
import hashlib, json, time
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fdcli.flower.wire import folder_to_record, record_to_folder

client = ClientApp()
server = ServerApp()


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@client.train()
def send(message, context):
    folder = Path(context.node_config["folder"])
    return Message(RecordDict({"bundle": folder_to_record(folder),
                               "fd": ConfigRecord({"digests": json.dumps(digests(folder))})}),
                   reply_to=message)


@server.main()
def main(grid, context):
    out = Path(context.run_config["out"])
    while not grid.get_node_ids():
        time.sleep(0.5)
    node = sorted(grid.get_node_ids())[0]
    started = time.perf_counter()
    (reply,) = grid.send_and_receive([Message(RecordDict(), node, "train")], timeout=3600)
    received = record_to_folder(reply.content.array_records["bundle"], out / "received",
                                "node", max_bytes=1 << 40)
    seconds = time.perf_counter() - started
    sent = json.loads(reply.content.config_records["fd"]["digests"])
    result = {"files": len(sent), "bytes": sum(p.stat().st_size for p in received.iterdir()),
              "byte_identical": digests(received) == sent, "seconds": seconds}
    (out / "result.json").write_text(json.dumps(result))
'''

PYPROJECT = '''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fd-large-bundle"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fd"

[tool.flwr.app.components]
serverapp = "echo_app:server"
clientapp = "echo_app:client"

[tool.flwr.app.config]
out = "{out}"
'''


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cross(root: Path, mib: int) -> dict:
    import numpy as np

    folder = root / f"bundle-{mib}"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    rng = np.random.default_rng(mib)
    for i in range(4):
        (folder / f"shard-{i:05d}.safetensors.zst").write_bytes(
            rng.integers(0, 256, (mib << 20) // 4, dtype=np.uint8).tobytes())
    app, out = root / f"app-{mib}", root / f"out-{mib}"
    for d in (app, out):
        d.mkdir()
    (app / "echo_app.py").write_text(APP)
    (app / "pyproject.toml").write_text(PYPROJECT.format(out=out))
    with local_deployment(root / f"processes-{mib}", [{"folder": str(folder)}]) as deployment:
        run = deployment.run(app, timeout=3600)
        rss = peak_rss_mib(deployment.processes[0].pid)
    result_file = out / "result.json"
    if not result_file.is_file():
        return {"mib": mib, "crossed": False, "flwr_run_tail": (run.stdout + run.stderr)[-2000:]}
    return {"mib": mib, "crossed": True, **json.loads(result_file.read_text()),
            "superlink_peak_rss_mib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", default="64,512")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for mib in [int(x) for x in args.mib.split(",")]:
        with tempfile.TemporaryDirectory(prefix="fd-flower-large-") as tmp:
            rows.append(cross(Path(tmp), mib))
        print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"benchmark": "flower_large_bundle", "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
