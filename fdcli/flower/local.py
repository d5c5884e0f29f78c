"""A Flower deployment on this machine: a SuperLink and SuperNodes as separate processes on
localhost, in insecure mode (no TLS, no node authentication: for trying the app and for tests,
never across sites; docs/flower.md has the real lines).

    with local_deployment(root, [{"data": ..., "proxy": ..., ...}, ...]) as deployment:
        result = deployment.run(app_folder)  # flwr run APP local --stream, to the end
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)


@dataclass
class LocalDeployment:
    """The running processes (the SuperLink first) and how to reach them."""

    env: dict[str, str]
    bindir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, app: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
        """``flwr run APP local --stream``, to the end of the run."""
        return subprocess.run([str(self.bindir / "flwr"), "run", str(app), "local",
                               "--stream"], env=self.env, capture_output=True, text=True,
                              timeout=timeout)


@contextmanager
def local_deployment(root: str | Path, node_configs: list[dict[str, Any]]
                     ) -> Iterator[LocalDeployment]:
    """Start a SuperLink and one SuperNode per entry of ``node_configs`` (its
    ``--node-config``), with their Flower home, their logs (``superlink.log``,
    ``supernode-I.log``) and a connection named ``local`` under ``root``; stop every process
    on the way out."""
    root = Path(root)
    home = root / "flwr-home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    bindir = Path(sys.executable).parent
    deployment = LocalDeployment(dict(os.environ, FLWR_HOME=str(home),
                                      FLWR_TELEMETRY_ENABLED="0",
                                      PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"),
                                 bindir)

    def start(name: str, *args: str) -> None:
        with open(root / f"{name}.log", "w") as log:
            deployment.processes.append(subprocess.Popen(
                [str(bindir / args[0]), *args[1:]], env=deployment.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("superlink", "flower-superlink", "--insecure", "--port", str(port),
              "--disable-runtime-dependency-installation")
        _wait_for(port, root / "superlink.log")
        for i, node in enumerate(node_configs):
            start(f"supernode-{i}", "flower-supernode", "--insecure", "--superlink",
                  f"127.0.0.1:{port}", "--port", str(free_port()), "--node-config",
                  " ".join(f'{k}="{v}"' for k, v in node.items()))
        yield deployment
    finally:
        for p in deployment.processes:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in deployment.processes:
            p.wait(timeout=60)
