"""Which process this is when ``torchrun`` or ``accelerate launch`` started several, and
which share of the work it takes (docs/scaling.md). Reads only the environment: no torch, so
the command line can ask before it loads anything heavy."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one launch (``RANK``/``WORLD_SIZE``/
    ``LOCAL_RANK``, as torchrun and accelerate set them); one process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """The launcher's ranks from the environment; a malformed value is an error, not rank 0."""
    values = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(key)
        try:
            values[key] = default if raw in (None, "") else int(raw)
        except ValueError:
            raise ValueError(f"environment variable {key}={raw!r}; expected an integer (set by "
                             "torchrun or accelerate launch)") from None
    r = Ranks(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if r.world < 1 or not 0 <= r.rank < r.world or r.local < 0:
        raise ValueError(f"RANK={r.rank}, WORLD_SIZE={r.world}, LOCAL_RANK={r.local}: expected "
                         "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return r


def share(count: int, r: Ranks) -> range:
    """The contiguous share ``[floor(rank * count / world), floor((rank + 1) * count / world))``
    of ``count`` items that rank ``r`` takes."""
    return range(r.rank * count // r.world, (r.rank + 1) * count // r.world)
