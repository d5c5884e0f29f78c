"""The README's main job runs and writes a bundle that verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fdcli import read_bundle, verify_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_bundle_roundtrip_example(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "bundle_roundtrip.py"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verified"] is True
    bundle = tmp_path / "out" / "bundle"
    assert verify_bundle(bundle).ok
    m = read_bundle(bundle).manifest
    assert m.task == "token" and m.num_classes == 256 and m.examples == 3
    assert result["rows"] == m.rows == 3 * 256
    assert result["bytes_per_token"] == round(sum(s.bytes for s in m.shards) / m.rows, 2)
