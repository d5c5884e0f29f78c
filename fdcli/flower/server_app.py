"""The ServerApp: the coordinator. It reads the run configuration
(:class:`fdcli.flower.settings.ServerSettings`) and runs :func:`fdcli.flower.coordinator.
coordinate` over the Deployment (or Simulation) Engine's grid."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.serverapp import ServerApp  # noqa: E402

from .coordinator import coordinate  # noqa: E402
from .settings import ServerSettings  # noqa: E402

app = ServerApp()


@app.main()
def main(grid, context) -> None:
    """Run the federation; an :class:`~fdcli.errors.FdError` (a bad configuration, too few
    bundles) is logged as one ``fd: error:`` line before the run is marked failed."""
    from logging import ERROR, INFO

    from flwr.common.logger import log

    from ..errors import FdError

    try:
        settings = ServerSettings.from_config(context.run_config)
        coordinate(grid, settings, context.run_id, log=lambda text: log(INFO, "fd: %s", text))
    except FdError as e:
        log(ERROR, "fd: error: %s", e)
        raise
