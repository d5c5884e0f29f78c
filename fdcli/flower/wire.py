"""A bundle (or any fd artifact folder) as a Flower record and back, byte for byte.

Each file of the folder becomes one ``Array`` of uint8 in an ``ArrayRecord``, keyed by its
path relative to the folder (``manifest.json``, ``shard-00000.safetensors.zst``,
``model.sig``). Flower sends every ``Array`` in chunks of at most
``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` bytes (5 MiB by default) through its object store, so a
bundle of any size crosses without meeting gRPC's message limit, and no chunking of fd's own
is needed.

What arrives is untrusted: :func:`record_to_folder` accepts only plain relative names (no
``..``, no absolute paths, no hidden files), at most :data:`MAX_FILES` files and
``max_bytes`` in all, and writes them into a fresh folder atomically, so a hostile record can
neither write outside the folder it is given nor leave a half-written one behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import FdError, quoted
from ..outputs import atomic_dir

#: most files one record may carry (a bundle has a manifest, its shards and a signature).
MAX_FILES = 100_000
#: largest record :func:`record_to_folder` writes unless told otherwise: 64 GiB.
MAX_BYTES = 64 << 30
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


def folder_to_record(folder: str | Path):
    """Every regular file under ``folder`` as a Flower ``ArrayRecord`` (uint8 arrays keyed by
    relative POSIX path, in sorted order). Links and other special files are refused."""
    from flwr.app import Array, ArrayRecord

    folder = Path(folder)
    arrays = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise FdError(f"{path}: not a regular file; a folder sent to Flower holds plain "
                          f"files only")
        if path.is_file():
            data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
            arrays[path.relative_to(folder).as_posix()] = Array(data)
    if not arrays:
        raise FdError(f"{folder}: no files to send")
    return ArrayRecord(arrays)


def check_name(name: object, where: str) -> str:
    """``name`` if it is a safe relative file path (at most 4 parts of letters, digits, ``.``,
    ``_`` and ``-``, none starting with a dot); else an error that says what was found."""
    if not isinstance(name, str):
        raise FdError(f"{where}: file name {quoted(name)}: expected a string")
    parts = name.split("/")
    if len(parts) > 4 or not all(_PART.fullmatch(p) for p in parts):
        raise FdError(f"{where}: file name {quoted(name)} refused: expected a relative path of "
                      f"at most 4 parts, each of letters, digits, '.', '_' and '-', not "
                      f"starting with '.'")
    return name


def record_to_folder(record, out: str | Path, where: str,
                     max_bytes: int = MAX_BYTES) -> Path:
    """Write the files of :func:`folder_to_record`'s ``record`` into the new folder ``out``
    (which must not exist), checking every name and the total size first; ``where`` names the
    sender in errors."""
    keys = list(record.keys())
    if not keys:
        raise FdError(f"{where}: the record holds no files")
    if len(keys) > MAX_FILES:
        raise FdError(f"{where}: {len(keys)} files, more than the {MAX_FILES} allowed")
    arrays = {}
    total = 0
    for key in keys:
        check_name(key, where)
        value = record[key].numpy()
        if value.dtype != np.uint8 or value.ndim != 1:
            raise FdError(f"{where}: file {key!r}: expected a 1-D uint8 array, found "
                          f"{value.dtype} of shape {tuple(value.shape)}")
        total += value.nbytes
        if total > max_bytes:
            raise FdError(f"{where}: the files add up to more than {max_bytes} bytes, the "
                          f"largest bundle this coordinator accepts (raise max-bundle-bytes)")
        arrays[key] = value
    names = set(arrays)
    for key in arrays:  # "a" and "a/b" cannot both be files
        parent = key.rpartition("/")[0]
        while parent:
            if parent in names:
                raise FdError(f"{where}: {parent!r} is sent both as a file and as a folder")
            parent = parent.rpartition("/")[0]
    out = Path(out)
    with atomic_dir(out) as tmp:
        for key, value in arrays.items():
            target = tmp / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(memoryview(np.ascontiguousarray(value)))
    return out
