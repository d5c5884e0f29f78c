"""Exit codes and messages a newcomer meets (issue 32): an unreadable folder, a missing file,
an unknown option and a missing argument, each through the real ``fd`` entry point in a child
process. Prints JSON. An unreadable folder needs a user without root's override of
permissions; as root (a container) it is simulated by denying ``os.access`` on that folder,
which is what fd and click both consult."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DENY = """
import os, sys
real = os.access
deny = os.environ["FD_DENY"]
os.access = lambda p, m, *a, **k: False if str(p) == deny else real(p, m, *a, **k)
from fdcli.cli import main
sys.argv = ["fd", *sys.argv[1:]]
main()
"""


def fd(*args, deny: str = "") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FD_DENY": deny}
    proc = subprocess.run([sys.executable, "-c", DENY, *map(str, args)], capture_output=True,
                          text=True, env=env, check=False)
    return {"command": "fd " + " ".join(map(str, args)), "exit": proc.returncode,
            "stderr": proc.stderr.strip()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        cases = {
            "unreadable folder": fd("verify", folder, deny=str(folder)),
            "missing file": fd("partition", Path(tmp) / "data.csv", "--out", Path(tmp) / "p"),
            "unknown option": fd("verify", folder, "--bogus"),
            "missing argument": fd("verify"),
        }
    print(json.dumps(cases, indent=2))


if __name__ == "__main__":
    main()
