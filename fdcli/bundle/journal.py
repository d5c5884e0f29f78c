"""The resume journal of a bundle being written: ``progress.jsonl`` in its hidden temporary
folder, one line per shard once that shard's file is complete.

Each line records the shard (as the manifest will), and the writer's state after the last
batch that lies wholly within the shards written so far: which example that batch ended
with (``after``) and the fidelity sums by then. An emit that dies leaves the folder behind
(a killed process cannot clean up; an interrupted one keeps it on purpose); ``fd emit-logits
--resume`` finds it, checks every shard the journal lists against its size and sha256, and
continues from the batch after ``after``: its rows up to the last written example are
encoded again and dropped, so the batches, the random draws and the shards are those of an
uninterrupted emit.

Nothing here trains or reads a model; the writer (:mod:`.writer`) calls it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .manifest import ShardInfo
from .shards import sha256_bytes

JOURNAL = "progress.jsonl"


@dataclass
class Checkpoint:
    """The writer's state once the batch ending with example ``after`` has landed."""

    after: int
    sums: dict[str, float]
    counted: int
    truncation: bool


@dataclass
class Resumed:
    """What a partial bundle hands on: its folder, the shards to keep, where to go on."""

    folder: Path
    shards: list[ShardInfo]
    checkpoint: Checkpoint
    written_through: int  # the last example id already in a kept shard
    row_bytes: float
    created: str
    lines: list[dict]  # the journal lines of the kept shards


def resume_key(fields: dict[str, Any]) -> str:
    """A digest of everything that decides a bundle's bytes (the manifest less its
    creation time, the shard size and the compression level)."""
    return "sha256:" + hashlib.sha256(json.dumps(fields, sort_keys=True, default=str)
                                      .encode()).hexdigest()


def append_line(folder: Path, key: str, created: str, row_bytes: float, info: ShardInfo,
                last_example: int, checkpoint: Checkpoint) -> None:
    """Record a complete shard (its file is already written and fsynced)."""
    line = json.dumps({"key": key, "created": created, "row_bytes": row_bytes,
                       "shard": asdict(info), "last_example": last_example,
                       "checkpoint": asdict(checkpoint)}, sort_keys=True)
    with open(folder / JOURNAL, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _lines(folder: Path) -> list[dict]:
    """The journal's complete lines (a line cut short by a crash ends it)."""
    try:
        text = (folder / JOURNAL).read_text()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for raw in text.split("\n")[:-1]:
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            break
    return out


def _shard_ok(folder: Path, info: ShardInfo) -> bool:
    path = folder / info.file
    try:
        return (path.is_file() and not path.is_symlink() and path.stat().st_size == info.bytes
                and sha256_bytes(path.read_bytes()) == info.sha256)
    except OSError:
        return False


def load_partial(folder: Path, key: str) -> tuple[Resumed | None, str]:
    """The part of ``folder`` that can be reused for a bundle with ``key``, or ``None`` and
    why not. Shards are kept while each one the journal lists is intact and numbered in
    order; every other file in the folder is removed when it is reused."""
    lines = _lines(folder)
    if not lines:
        return None, "it holds no complete shard"
    if any(line.get("key") != key for line in lines):
        return None, "it was written with other settings (model, proxy, encoding or options)"
    kept: list[dict] = []
    for i, line in enumerate(lines):
        try:
            info = ShardInfo(**line["shard"])
        except (TypeError, KeyError):
            break
        if info.file != f"shard-{i:05d}.safetensors.zst" or not _shard_ok(folder, info):
            break
        kept.append((line, info))
    if not kept:
        return None, "its first shard is missing or damaged"
    last = kept[-1][0]
    try:
        c = Checkpoint(**last["checkpoint"])
        sound = (type(c.after) is int and type(c.counted) is int and type(c.truncation) is bool
                 and isinstance(c.sums, dict)
                 and all(type(v) in (int, float) for v in c.sums.values())
                 and type(last["last_example"]) is int and c.after <= last["last_example"]
                 and type(last["row_bytes"]) in (int, float) and last["row_bytes"] > 0
                 and isinstance(last["created"], str))
    except (TypeError, KeyError):
        sound = False
    if not sound:
        return None, "its journal is damaged"
    return Resumed(folder=folder, shards=[info for _, info in kept], checkpoint=c,
                   written_through=last["last_example"], row_bytes=float(last["row_bytes"]),
                   created=last["created"], lines=[line for line, _ in kept]), ""


def tidy(resumed: Resumed) -> None:
    """Remove from the reused folder whatever the kept shards are not (later shards, files
    cut short), and rewrite the journal to list only the kept ones."""
    keep = {info.file for info in resumed.shards}
    for entry in resumed.folder.iterdir():
        if entry.name not in keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in resumed.lines)
    tmp = resumed.folder / f".{JOURNAL}.part"
    tmp.write_text(text)
    os.replace(tmp, resumed.folder / JOURNAL)
