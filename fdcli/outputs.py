"""Output directories that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FdError


def check_free(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; never replace a file with a folder."""
    if path.exists() and not overwrite:
        raise FdError(f"{path}: output already exists; choose another path or pass "
                      "--overwrite (overwrite=True) to replace it")
    if path.exists() and not path.is_dir():
        raise FdError(f"{path}: exists and is not a folder; outputs are folders")


def temporary_sibling(path: Path) -> Path:
    """A new hidden folder next to ``path``, on the same file system."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished folder ``tmp`` to ``path``, replacing an old ``path`` only with
    ``overwrite`` (checked again now, in case it appeared meanwhile)."""
    check_free(path, overwrite)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``path``; on success it replaces ``path``, on
    any error it is removed and ``path`` is left as it was."""
    path = Path(path)
    check_free(path, overwrite)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def fresh_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Create ``path`` (replacing it only with ``overwrite``) and remove it again if the block
    fails: for outputs whose files record their own final paths."""
    path = Path(path)
    check_free(path, overwrite)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
