"""The exceptions fd raises. The CLI prints any FdError and exits 1, without a traceback."""

from __future__ import annotations


def quoted(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: values quoted in messages come from a
    bundle and may be megabytes long."""
    return _cut(repr(value), limit)


class FdError(Exception):
    """A problem the user can fix: the message names the file, the field, what was expected,
    what was found and what to do."""


class BundleError(FdError):
    """A logit bundle is malformed, corrupt, unsafe to load or of an unknown format version.

    ``problems`` lists every problem found, when a check collected more than one.
    """

    #: longest message kept whole; strings from a hostile bundle may be megabytes long.
    MAX_PROBLEM = 1000

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = [_cut(p, self.MAX_PROBLEM) for p in (problems or [message])]
        super().__init__(_cut(message, self.MAX_PROBLEM * max(1, len(self.problems))))

    @classmethod
    def collected(cls, where: str, problems: list[str]) -> "BundleError":
        """One error for several problems found in ``where``; each problem names it."""
        problems = [p if p.startswith(where) else f"{where}: {p}" for p in problems]
        if len(problems) == 1:
            return cls(problems[0], problems)
        head = f"{where}: {len(problems)} problem(s) found:"
        return cls("\n".join([head, *(f"  - {p}" for p in problems)]), problems)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class IncompatibleBundlesError(BundleError):
    """Bundles that cannot be combined: their proxy set, label space, task or encoding differ."""


class FdWarning(UserWarning):
    """Something the user should know and can act on, though fd can go on (a weak teacher).
    The CLI prints it to stderr as ``warning: ...``."""
