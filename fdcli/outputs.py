"""Output directories that appear whole or not at all."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FdError
from .launch import ranks


def check_free(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; never replace a file with a folder."""
    if path.exists() and not overwrite:
        raise FdError(f"{path}: output already exists; choose another path or pass "
                      "--overwrite (overwrite=True) to replace it")
    if path.exists() and not path.is_dir():
        raise FdError(f"{path}: exists and is not a folder; outputs are folders")


def make_parents(path: Path) -> list[Path]:
    """Create the missing parent folders of ``path``; the ones created, outermost first, for
    :func:`remove_created` to take away again if the output fails."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_created(created: list[Path]) -> None:
    """Remove folders :func:`make_parents` created, innermost first, while they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def remove_stale(path: Path) -> list[Path]:
    """Remove the hidden ``.NAME.tmp-PID-*`` folders that runs killed while writing ``path``
    left next to it (those whose process no longer exists on this machine)."""
    removed = stale_siblings(path)
    for entry in removed:
        shutil.rmtree(entry, ignore_errors=True)
    return removed


def stale_siblings(path: Path, own: bool = False) -> list[Path]:
    """The hidden folders that runs killed while writing ``path`` left next to it (see
    :func:`remove_stale`), the most recently changed first; with ``own``, also those of this
    process (a writer interrupted earlier in it, as in a notebook)."""
    try:
        entries = list(path.parent.glob(f".{glob.escape(path.name)}.tmp-*"))
    except OSError:
        return []
    out = []
    for entry in entries:
        pid = entry.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        mine = pid.isdigit() and int(pid) == os.getpid()
        if pid.isdigit() and (own and mine or not mine and not _alive(int(pid))) \
                and entry.is_dir() and not entry.is_symlink():
            out.append(entry)
    return sorted(out, key=lambda e: e.stat().st_mtime, reverse=True)


def _own_temporary(path: Path) -> Path:
    """A new hidden name next to ``path`` that names this process."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def claim_sibling(path: Path, stale: Path) -> Path:
    """Rename the stale folder ``stale`` to a new temporary name of this process."""
    tmp = _own_temporary(path)
    os.replace(stale, tmp)
    return tmp


def temporary_sibling(path: Path) -> Path:
    """A new hidden folder next to ``path`` (whose parent exists: :func:`make_parents`), on
    the same file system, named after this process so that a later run can clear it away if
    this one is killed."""
    remove_stale(path)
    tmp = _own_temporary(path)
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
def atomic_dir(path: str | os.PathLike, overwrite: bool = False,
               sign_key=None) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``path``; on success it is signed with
    ``sign_key`` where one is given (OpenSSF ``model.sig``,
    :func:`fdcli.bundle.signing.sign_folder`) and replaces ``path``; on any error it is
    removed and ``path`` is left as it was. Under several processes of one
    launch (torchrun, accelerate launch: data-parallel training) only process 0 writes
    ``path``; the others get a scratch folder that is removed afterwards."""
    path = Path(path)
    check_free(path, overwrite)
    if not ranks().main:
        with tempfile.TemporaryDirectory(prefix="fd-rank-") as scratch:
            yield Path(scratch)
        return
    created = make_parents(path)
    try:
        tmp = temporary_sibling(path)
    except BaseException:
        remove_created(created)
        raise
    try:
        yield tmp
        if sign_key is not None:
            from .bundle.signing import sign_folder

            sign_folder(tmp, None, sign_key)
        move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        raise


@contextmanager
def fresh_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Create ``path`` (replacing it only with ``overwrite``) and remove it again if the block
    fails: for outputs whose files record their own final paths."""
    path = Path(path)
    check_free(path, overwrite)
    if path.exists():
        shutil.rmtree(path)
    created = make_parents(path)
    path.mkdir()
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        remove_created(created)
        raise
