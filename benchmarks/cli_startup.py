"""How long ``fd`` takes to start, and which heavy libraries its light commands import, as JSON.

Each command runs ``--repeats`` times in a fresh process, interleaved with the baseline
``python -c pass``; the median wall times and their difference are reported. A second pass
runs each light command in-process under ``python -c`` and lists which of torch,
transformers, datasets and flwr ended up in ``sys.modules``::

    python benchmarks/cli_startup.py [--repeats 7] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "datasets", "flwr", "sklearn", "matplotlib")
PROBE = """
import sys
from fdcli.cli import main
sys.argv = ["fd", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("\\nHEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def small_bundle(root: Path) -> Path:
    import torch

    from fdcli.bundle import DenseCodec, write_bundle

    path = root / "bundle"
    write_bundle(path, torch.arange(8), torch.randn(8, 3), codec=DenseCodec(),
                 task="classification", num_classes=3, label_names=["a", "b", "c"],
                 proxy_fingerprint="sha256:" + "ab" * 32, client_id="bench",
                 model_fingerprint="sha256:" + "cd" * 32)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    fd = shutil.which("fd") or "fd"
    root = Path(tempfile.mkdtemp(prefix="fd-startup-"))
    bundle = small_bundle(root)
    commands = {"fd --version": [fd, "--version"], "fd --help": [fd, "--help"],
                "fd inspect": [fd, "inspect", str(bundle)],
                "fd verify": [fd, "verify", str(bundle)]}
    baseline = [sys.executable, "-c", "pass"]
    times: dict[str, list[float]] = {name: [] for name in ["python -c pass", *commands]}
    for _ in range(args.repeats):
        times["python -c pass"].append(wall(baseline))
        for name, cmd in commands.items():
            times[name].append(wall(cmd))
    base = statistics.median(times["python -c pass"])
    result = {"repeats": args.repeats, "median_s": {k: round(statistics.median(v), 3)
                                                    for k, v in times.items()},
              "over_python_s": {k: round(statistics.median(v) - base, 3)
                                for k, v in times.items() if k in commands},
              "heavy_imports": {}}
    for name, cmd in commands.items():
        out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *cmd[1:]],
                             capture_output=True, text=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("HEAVY:"))
        result["heavy_imports"][name] = [m for m in line[6:].split(",") if m]
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
