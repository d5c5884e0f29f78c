"""The bundle fuzzer (tests/fuzzing.py) in a child process: at least 2,000 hostile cases, only
FdError escaping, no hang, and a bounded peak memory. Its speed is a benchmark, not a test
(a busy machine would fail a wall-time budget): benchmarks/results/fuzz.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: the child's peak resident memory, torch and the test templates included (measured:
#: benchmarks/results/fuzz.json).
MAX_RSS_MIB = 768


def test_fuzzer_over_manifests_shards_and_file_types():
    root = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-m", "tests.fuzzing"], cwd=root,
                           capture_output=True, text=True, timeout=120,  # a hang fails here
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["cases"] >= 2000, result
    assert result["max_rss_mib"] < MAX_RSS_MIB, result
