"""``manifest.json``: what a bundle holds, who made it, and how to check it.

:meth:`BundleManifest.from_dict` checks every field and reports all problems together.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BundleError, quoted
from .codecs import Codec, codec_from_spec

FORMAT_NAME = "fd-logit-bundle"
FORMAT_VERSION = 1
TASKS = ("classification", "token", "embedding")
#: the tasks whose bundles hold exactly one row per example
ROW_PER_EXAMPLE = ("classification", "embedding")
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"  # fd's older Ed25519 signature (fdcli.bundle.signing)
STANDARD_SIGNATURE = "model.sig"  # OpenSSF Model Signing (fdcli.bundle.openssf)
#: the most classes (or vocabulary ids) a manifest may declare unless a caller allows more.
MAX_CLASSES = 1 << 20
#: the longest producer.client_id.
MAX_CLIENT_ID = 256
SHARD_RE = re.compile(r"^shard-\d{5}\.safetensors\.zst$")
_FINGERPRINT_RE = re.compile(r"^[a-z0-9]+:[0-9a-f]{8,128}$")


def fingerprint_labels(names: list[str]) -> str:
    """Fingerprint of an ordered label space or vocabulary (one name per id)."""
    blob = json.dumps(list(names), ensure_ascii=False, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


@dataclass
class ShardInfo:
    file: str
    sha256: str
    rows: int
    examples: int
    bytes: int
    raw_bytes: int


@dataclass
class Producer:
    client_id: str
    model_fingerprint: str
    fd_version: str
    created: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class BundleManifest:
    task: str
    encoding: dict[str, Any]
    num_classes: int
    label_space: dict[str, Any]
    proxy: dict[str, Any]
    producer: Producer
    rows: int
    examples: int
    shards: list[ShardInfo]
    fidelity: dict[str, float | None]
    provenance: list[dict[str, Any]] = field(default_factory=list)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def codec(self) -> Codec:
        return codec_from_spec(self.encoding, f"{MANIFEST}: field 'encoding'")

    @property
    def label_fingerprint(self) -> str:
        return self.label_space["fingerprint"]

    @property
    def proxy_fingerprint(self) -> str:
        return self.proxy["fingerprint"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        order = ["format", "version", "task", "encoding", "num_classes", "label_space", "proxy",
                 "producer", "rows", "examples", "fidelity", "shards", "provenance"]
        return {k: d[k] for k in order}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST,
                  max_classes: int = MAX_CLASSES) -> "BundleManifest":
        if not isinstance(d, dict):
            raise BundleError(f"{where}: expected a JSON object, found {type(d).__name__}")
        if d.get("format") != FORMAT_NAME:
            raise BundleError(f"{where}: field 'format': expected {FORMAT_NAME!r}, found "
                              f"{quoted(d.get('format'))}; this is not an fd logit bundle")
        if d.get("version") != FORMAT_VERSION:
            raise BundleError(f"{where}: field 'version': this fd reads bundle format version "
                              f"{FORMAT_VERSION}, found version {quoted(d.get('version'))}; "
                              "use an fd "
                              "release that knows that version, or re-emit the bundle")
        p: list[str] = []

        def need(key, kind, ctx=d, prefix=""):
            value = ctx.get(key) if isinstance(ctx, dict) else None
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if not ok:
                tname = kind.__name__ if isinstance(kind, type) else "/".join(
                    k.__name__ for k in kind)
                p.append(f"field '{prefix}{key}': expected {tname}, found {quoted(value)}")
                return None
            return value

        def count(key, ctx=d, prefix="", minimum=0):
            value = need(key, int, ctx, prefix)
            if value is not None and value < minimum:
                p.append(f"field '{prefix}{key}': expected an integer >= {minimum}, found {value}")
            return value

        task = need("task", str)
        if task is not None and task not in TASKS:
            p.append(f"field 'task': expected one of {list(TASKS)}, found {quoted(task)}")
        encoding = need("encoding", dict)
        if encoding is not None:
            try:
                codec_from_spec(encoding, "field 'encoding'")
            except BundleError as exc:
                p.append(str(exc))
        num_classes = count("num_classes", minimum=2)
        if num_classes is not None and num_classes > max_classes:
            p.append(f"field 'num_classes': expected at most {max_classes} (the max_classes "
                     f"limit; raise it with --limit max_classes=N), found {num_classes}")
        for key in ("label_space", "proxy"):
            obj = need(key, dict)
            if obj is not None:
                fp = need("fingerprint", str, obj, f"{key}.")
                if fp is not None and not _FINGERPRINT_RE.match(fp):
                    p.append(f"field '{key}.fingerprint': expected 'algo:hexdigest', found "
                             f"{quoted(fp)}")
        names = (d.get("label_space") or {}).get("names") if isinstance(
            d.get("label_space"), dict) else None
        if names is not None:
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                p.append("field 'label_space.names': expected a list of strings")
            elif num_classes is not None and len(names) != num_classes:
                p.append(f"field 'label_space.names': expected {num_classes} names "
                         f"(num_classes), found {len(names)}")
            elif fingerprint_labels(names) != d["label_space"].get("fingerprint"):
                p.append("field 'label_space.fingerprint': does not match label_space.names")
        prod = need("producer", dict)
        if prod is not None:
            for key in ("client_id", "model_fingerprint", "fd_version", "created"):
                need(key, str, prod, "producer.")
            cid = prod.get("client_id")
            if isinstance(cid, str) and not 0 < len(cid) <= MAX_CLIENT_ID:
                p.append(f"field 'producer.client_id': expected 1 to {MAX_CLIENT_ID} characters, "
                         f"found {len(cid)}")
            need("config", dict, prod, "producer.")
        rows = count("rows")
        examples = count("examples")
        shards_raw = need("shards", list)
        shards: list[ShardInfo] = []
        seen: set[str] = set()
        for i, s in enumerate(shards_raw or []):
            pre = f"shards[{i}]."
            if not isinstance(s, dict):
                p.append(f"field 'shards[{i}]': expected an object, found {quoted(s)}")
                continue
            fname = need("file", str, s, pre)
            if fname is not None and not SHARD_RE.match(fname):
                p.append(f"field '{pre}file': expected a name like 'shard-00000.safetensors.zst',"
                         f" found {quoted(fname)}")
            elif fname in seen:
                p.append(f"field '{pre}file': {quoted(fname)} is listed twice")
            seen.add(fname)
            digest = need("sha256", str, s, pre)
            if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
                p.append(f"field '{pre}sha256': expected 64 hex digits, found {quoted(digest)}")
            vals = [count(k, s, pre) for k in ("rows", "examples")]
            vals += [count(k, s, pre, minimum=1) for k in ("bytes", "raw_bytes")]
            if all(v is not None for v in vals) and fname and digest:
                shards.append(ShardInfo(fname, digest, *vals))
        if shards_raw is not None and len(shards) == len(shards_raw):
            if rows is not None and sum(s.rows for s in shards) != rows:
                p.append(f"field 'rows': {rows}, but the shards hold "
                         f"{sum(s.rows for s in shards)} rows")
            if examples is not None and sum(s.examples for s in shards) != examples:
                p.append(f"field 'examples': {examples}, but the shards hold "
                         f"{sum(s.examples for s in shards)} examples")
        if task in ROW_PER_EXAMPLE and rows is not None and rows != examples:
            p.append(f"field 'rows': a {task} bundle has one row per example; found "
                     f"{rows} rows for {examples} examples")
        fidelity = need("fidelity", dict)
        for key, value in (fidelity or {}).items():
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                p.append(f"field 'fidelity.{key}': expected a number or null, found "
                         f"{quoted(value)}")
        provenance = d.get("provenance", [])
        if not isinstance(provenance, list):
            p.append(f"field 'provenance': expected a list, found {quoted(provenance)}")
        if p:
            raise BundleError.collected(where, p)
        return cls(task=task, encoding=encoding, num_classes=num_classes,
                   label_space=d["label_space"], proxy=d["proxy"], producer=Producer(**{
                       k: prod[k] for k in ("client_id", "model_fingerprint", "fd_version",
                                            "created", "config")}),
                   rows=rows, examples=examples, shards=shards, fidelity=fidelity,
                   provenance=provenance)
