"""``fd.json``: what fd records about a model folder it wrote, and how it is read back.

A model folder may come from another institution (a published student, a specialist sent
for inspection), so ``fd.json`` is read like a bundle's manifest: bounded in size, parsed as
JSON only, and every field fd uses checked for its type before anything trusts it. Every
problem is reported at once, naming the file and the field. The same check runs when fd
writes one, so a folder fd wrote always reads back. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import FdError, quoted

FD_META = "fd.json"
#: an fd.json larger than this is refused before it is parsed
MAX_META_BYTES = 4 * 1024 * 1024
#: any string in it longer than this is refused (names, ids and fingerprints are short)
MAX_STRING = 4096
#: the versions of this layout fd reads (fd.json without one is version 1)
SCHEMA_VERSIONS = (1,)


class MetaError(FdError):
    """A model folder's fd.json is unreadable or has a field of the wrong type."""


def _string(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_STRING


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(_string(x) for x in v)


def _histogram(v: Any) -> bool:
    return isinstance(v, dict) and all(_string(k) and _count(n) for k, n in v.items())


def _object(v: Any) -> bool:
    return isinstance(v, dict)


def _base(v: Any) -> bool:
    return isinstance(v, dict) and all(_string(v.get(k)) for k in ("path", "fingerprint")) \
        and (v.get("resolved") is None or _string(v["resolved"]))


def _task(v: Any) -> bool:
    from .tasks import TASKS

    return v in TASKS


#: field -> (check, what it must be); fields not listed are kept as they are and not used
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "schema_version": (lambda v: v in SCHEMA_VERSIONS, f"one of {list(SCHEMA_VERSIONS)}"),
    "fd_version": (_string, "a string"),
    "stage": (_string, "a string"),
    "client_id": (lambda v: _string(v) and bool(v), "a non-empty string"),
    "task": (_task, "a task fd knows (fdcli.tasks.TASKS)"),
    "kind": (lambda v: v in ("text", "image"), "'text' or 'image'"),
    "architecture": (_string, "a string"),
    "model_fingerprint": (_string, "a string"),
    "vocab_fingerprint": (_string, "a string"),
    "pooling": (_string, "a string"),
    "label_names": (_strings, "a list of strings"),
    "label_histogram": (_histogram, "an object of label name -> count"),
    "train_examples": (_count, "a count"),
    "val_examples": (_count, "a count"),
    "train_tokens": (_count, "a count"),
    "vocab_size": (_count, "a count"),
    "proxy_examples": (_count, "a count"),
    "proxy_tokens": (_count, "a count"),
    "anchors": (_count, "a count"),
    "round": (lambda v: _count(v) and v >= 1, "a round number (1 or more)"),
    "metrics": (_object, "an object"),
    "config": (_object, "an object"),
    "consensus": (_object, "an object"),
    "privacy": (_object, "an object (the DP guarantee)"),
    "base_model": (_base, "an object with a string path and fingerprint (an adapter's base)"),
    "merged_from": (_base, "an object with a string path and fingerprint"),
}


@dataclass(frozen=True)
class FdMeta:
    """A checked ``fd.json``. The fields fd reads are typed here; :attr:`fields` holds the
    whole object (including fields fd only records)."""

    fields: Mapping[str, Any]

    @property
    def task(self) -> str | None:
        return self.fields.get("task")

    @property
    def client_id(self) -> str | None:
        return self.fields.get("client_id")

    @property
    def stage(self) -> str | None:
        return self.fields.get("stage")

    @classmethod
    def check(cls, value: Any, where: str) -> "FdMeta":
        """``value`` (parsed JSON) checked; :class:`MetaError` lists every problem."""
        if not isinstance(value, dict):
            raise MetaError(f"{where}: expected a JSON object, found {type(value).__name__}")
        problems = [f"field {name!r}: expected {what}, found {quoted(value[name])}"
                    for name, (ok, what) in FIELDS.items()
                    if name in value and value[name] is not None and not ok(value[name])]
        if problems:
            raise MetaError(f"{where}: " + "; ".join(problems) + " (a model folder fd wrote "
                            "has a valid fd.json; remove or repair this one)")
        return cls(value)

    @classmethod
    def read(cls, folder: str | Path) -> "FdMeta | None":
        """The checked ``fd.json`` of ``folder``; None when there is none (a model folder fd
        did not write). A symlink, a file too large, or one that is not JSON is refused."""
        path = Path(folder) / FD_META
        if not path.exists() and not path.is_symlink():
            return None
        if path.is_symlink() or not path.is_file():
            raise MetaError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size > MAX_META_BYTES:
            raise MetaError(f"{path}: {size:,} bytes, more than the {MAX_META_BYTES:,} an "
                            "fd.json may have")
        try:
            value = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as exc:
            raise MetaError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
        return cls.check(value, str(path))

    def write(self, folder: str | Path) -> None:
        """Write ``folder/fd.json`` (checked again first)."""
        self.check(dict(self.fields), str(Path(folder) / FD_META))
        (Path(folder) / FD_META).write_text(json.dumps(dict(self.fields), indent=2) + "\n")


def read_fd_meta(folder: str | Path) -> dict[str, Any]:
    """The checked fd.json of a model folder fd wrote, as a dict, or {} for any other
    folder."""
    meta = FdMeta.read(folder)
    return {} if meta is None else dict(meta.fields)


def write_fd_meta(folder: str | Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta`` as the checked fd.json of ``folder``, with its schema version."""
    FdMeta.check({"schema_version": SCHEMA_VERSIONS[-1], **meta},
                 str(Path(folder) / FD_META)).write(folder)
