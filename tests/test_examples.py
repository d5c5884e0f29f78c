"""The README's main job runs and writes a bundle that verifies."""

from __future__ import annotations

import hashlib
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


def test_airgapped_round_example(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", EPOCHS="8",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    work = tmp_path / "round"
    proc = subprocess.run(["bash", str(ROOT / "examples" / "airgapped_round.sh"), str(work)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sites = ["hospital-a", "hospital-b", "hospital-c"]
    c = work / "coordinator"
    for r in (1, 2):
        for site in sites:
            assert verify_bundle(c / f"usb-{r}" / site).ok
        consensus = read_bundle(c / f"consensus-{r}").manifest
        assert [p["client_id"] for p in consensus.provenance] == sites
        assert consensus.producer.config["rule"] == "coverage"
        assert consensus.producer.config["round"] == r
        scores = json.loads((c / f"student-{r}-eval.json").read_text())
        assert scores["examples"] == 150
        assert scores["accuracy"] > 0.5  # three balanced classes: chance is 1/3
    digest = hashlib.sha256((c / "consensus-1" / "manifest.json").read_bytes()).hexdigest()
    for site in sites:
        meta = json.loads((work / site / "specialist-2" / "fd.json").read_text())
        assert meta["round"] == 2 and meta["consensus"]["sha256"] == digest
        assert meta["client_id"] == site
    student = json.loads((c / "student-2" / "fd.json").read_text())
    assert student["config"]["student"] == str(c / "student-1")
