"""What an fd command prints on stderr, counted, as JSON: every line (each redraw of a
progress bar, ended by a carriage return, counts as one), how many are fd's own
(``fd simulate: ...``, ``warning: ...``, ``error: ...``) and the most frequent of the
others::

    python benchmarks/stderr_lines.py -- simulate --out /tmp/fd-simulation   # the README job
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import sys
import time

OWN = re.compile(r"^(fd simulate: |warning: |error: )")


def main() -> None:
    args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else ["simulate", "--out",
                                                                          "fd-simulation"]
    fd = shutil.which("fd") or "fd"
    t0 = time.perf_counter()
    run = subprocess.run([fd, *args], capture_output=True, text=True)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    own = [line for line in lines if OWN.match(line)]
    others = collections.Counter(re.sub(r"\d+", "N", line.split("\r")[-1])[:80]
                                 for line in lines if not OWN.match(line))
    print(json.dumps({"command": ["fd", *args], "exit": run.returncode,
                      "seconds": round(time.perf_counter() - t0, 1),
                      "stderr_lines": len(lines), "fd_own_lines": len(own),
                      "other_lines": len(lines) - len(own),
                      "most_common_others": others.most_common(8),
                      "stdout_lines": len(run.stdout.splitlines())}, indent=1))


if __name__ == "__main__":
    main()
