"""Progress bars on stderr (rich), so stdout stays for results."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

#: False silences every bar (``fd --quiet``).
ENABLED = True


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True
                 ) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a transient bar on stderr when enabled."""
    if not (enabled and ENABLED):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
