"""Reading files that came from another institution, within stated resource limits.

Every file of a bundle is opened with :func:`read_regular`: only a regular file inside the
bundle folder is read (never a symlink, FIFO, device or folder), its size is checked with
``fstat`` before a byte is read, and the read is capped at that size. :class:`Limits` holds
every bound a hostile bundle could otherwise push (docs/bundle-format.md, "Resource limits");
the CLI raises one with ``--limit NAME=VALUE``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import BundleError, FdError
from .manifest import MAX_CLASSES
from .shards import MAX_SHARD_BYTES

_KIB, _MIB, _GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """Bounds on what reading a bundle may cost. Every field can be raised (or lowered)."""

    #: largest manifest.json or signature file read, in bytes.
    max_manifest_bytes: int = 8 * _MIB
    #: deepest nesting of JSON objects and lists in a manifest.
    max_json_depth: int = 32
    #: longest string (value or key) in a manifest, in characters.
    max_string_chars: int = 4096
    #: largest shard, compressed on disk or decompressed, in bytes.
    max_shard_bytes: int = MAX_SHARD_BYTES
    #: most classes (or vocabulary ids) a bundle may declare.
    max_classes: int = MAX_CLASSES
    #: largest dense float array built from bundle rows (rows x classes x bytes per value).
    max_dense_bytes: int = 2 * _GIB
    #: most decoded shard bytes ``fd aggregate`` holds at once (one shard of every input);
    #: above it, each shard is inflated to a temporary file and read a window of rows at a time.
    max_held_bytes: int = 512 * _MIB

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_overrides(self, items: list[str] | None, where: str = "--limit") -> "Limits":
        """These limits with ``NAME=VALUE`` items applied (VALUE an integer, optionally with a
        KiB/MiB/GiB suffix, as in ``max_shard_bytes=4GiB``)."""
        changes = {}
        for item in items or []:
            name, sep, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in self.names():
                raise FdError(f"{where} {item!r}: expected NAME=VALUE with NAME one of "
                              f"{self.names()}")
            changes[name] = parse_size(value, f"{where} {name}")
        return replace(self, **changes)


def parse_size(text: str, where: str) -> int:
    """A positive integer, optionally suffixed KiB, MiB or GiB (also K, M, G)."""
    t = text.strip()
    scale = 1
    for suffix, mult in (("KiB", _KIB), ("MiB", _MIB), ("GiB", _GIB),
                         ("K", _KIB), ("M", _MIB), ("G", _GIB)):
        if t.endswith(suffix):
            t, scale = t[:-len(suffix)].strip(), mult
            break
    try:
        value = int(t) * scale
    except ValueError:
        value = 0
    if value <= 0:
        raise FdError(f"{where}: expected a positive integer (optionally with KiB, MiB or GiB), "
                      f"found {text!r}")
    return value


DEFAULT_LIMITS = Limits()

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: Path, max_bytes: int, what: str = "file",
                 expected: int | None = None) -> bytes:
    """The bytes of the regular file ``path``: refused, without reading, when it is a symlink,
    FIFO, device or folder, when ``fstat`` says it is larger than ``max_bytes``, or when its
    size differs from ``expected``. ``what`` names the limit in the message."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        link = " (fd does not follow links)" if stat.S_ISLNK(st.st_mode) else ""
        raise BundleError(f"{path}: is {_kind(st.st_mode)}; expected a regular file{link}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)  # the file actually opened: it may have changed since lstat
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path}: is {_kind(st.st_mode)}; expected a regular file")
        size = st.st_size
        if expected is not None and size != expected:
            raise BundleError(f"{path}: {size} bytes on disk, the manifest declares {expected};"
                              " the file is truncated or was replaced")
        if size > max_bytes:
            hint = (f" (raise it with --limit {what}=... if the file is trusted)"
                    if what in Limits.names() else "")
            raise BundleError(f"{path}: {size} bytes, over the {what} limit of {max_bytes} "
                              f"bytes; refusing to read it{hint}")
        parts, got = [], 0
        while got <= size:  # one byte more than fstat said, to notice a growing file
            chunk = os.read(fd, size + 1 - got)  # size was checked against max_bytes
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if got != size:
        raise BundleError(f"{path}: changed while it was read ({got} bytes, fstat said {size})")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def json_shape(value) -> tuple[int, int]:
    """(nesting depth, longest string or key) of a parsed JSON value, without recursion; a
    scalar has depth 0."""
    depth, longest, stack = 0, 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            longest = max(longest, len(v))
            continue
        if isinstance(v, dict):
            longest = max([longest, *map(len, v)])
            v = list(v.values())
        if isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list, str)))
    return depth, longest


def parse_json(data: bytes, where, limits: Limits = DEFAULT_LIMITS):
    """A small JSON document from a bundle, within the nesting-depth and string limits."""
    too_deep = (f"{where}: JSON nested more than {limits.max_json_depth} levels deep "
                "(max_json_depth); refusing it")
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise BundleError(too_deep) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    depth, longest = json_shape(value)
    if depth > limits.max_json_depth:
        raise BundleError(too_deep)
    if longest > limits.max_string_chars:
        raise BundleError(f"{where}: a string of {longest} characters, over the "
                          f"max_string_chars limit of {limits.max_string_chars}; refusing it")
    return value
