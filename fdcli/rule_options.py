"""Which options of ``fd aggregate`` each aggregation rule takes (no torch here: the command
line reads it to refuse an option that the chosen rule would ignore, such as ``--tau`` with
``--rule mean``). The rules themselves are in :mod:`fdcli.rules`."""

from __future__ import annotations

#: option (library keyword of :func:`fdcli.stages.aggregate.aggregate`) -> the rules using it
RULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "confidence_measure": ("confidence",),
    "tau": ("confidence",),
    "era_temperature": ("entropy-reduction",),
    "trim": ("trimmed-mean",),
    "prior_correction": ("coverage",),
    "dp_sigma": ("gnmax",),
    "dp_threshold": ("gnmax",),
    "dp_threshold_sigma": ("gnmax",),
    "dp_delta": ("gnmax",),
}
