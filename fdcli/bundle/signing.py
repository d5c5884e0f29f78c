"""Ed25519 signatures over a bundle's manifest (which lists every shard's sha256).

A signed bundle holds ``signature.json`` beside its manifest::

    {"format": "fd-bundle-signature", "version": 1, "algorithm": "ed25519",
     "key_id": "ed25519:<16 hex>", "public_key": "<base64 of 32 bytes>",
     "manifest_sha256": "<hex>", "signature": "<base64 of 64 bytes>"}

The signature covers the manifest's exact bytes, so one changed byte in any shard (its sha256
no longer matches) or in the manifest is caught. Keys are PEM files made by :func:`keygen`
(``fd keygen``): ``NAME.key`` (private, PKCS#8, mode 0600) and ``NAME.pub`` (public). A
coordinator trusts the ``*.pub`` files in one folder. ``cryptography`` is imported only here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from ..errors import BundleError, FdError, quoted
from .manifest import SIGNATURE
from .safeio import DEFAULT_LIMITS, Limits, parse_json, read_regular

SIGNATURE_FORMAT = "fd-bundle-signature"


def _crypto():
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519, serialization, InvalidSignature


def key_id(public_raw: bytes) -> str:
    """A short, stable name for a public key: ``ed25519:`` and 16 hex digits of its sha256."""
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


def _raw_public(public_key) -> bytes:
    _, serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keygen(out_dir: str | os.PathLike, name: str, overwrite: bool = False) -> dict[str, str]:
    """Write a new key pair ``NAME.key`` (private, mode 0600) and ``NAME.pub`` into
    ``out_dir``: ``{"private", "public", "key_id"}``."""
    ed25519, serialization, _ = _crypto()
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise FdError(f"--name {name!r}: expected a plain file name")
    out = Path(out_dir)
    private, public = out / f"{name}.key", out / f"{name}.pub"
    for path in (private, public):
        if path.exists() and not overwrite:
            raise FdError(f"{path}: already exists; choose another --name or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    tmp = private.with_name(f".{private.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, private)
    public.write_bytes(pub)
    return {"private": str(private), "public": str(public),
            "key_id": key_id(_raw_public(key.public_key()))}


def load_private_key(path: str | os.PathLike):
    """An Ed25519 private key from a PEM file made by :func:`keygen`."""
    ed25519, serialization, _ = _crypto()
    path = Path(path)
    try:
        data = read_regular(path, 1 << 16, "key file")
    except FileNotFoundError:
        raise FdError(f"{path}: no such key file; make one with fd keygen") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise FdError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise FdError(f"{path}: expected an Ed25519 private key, found "
                      f"{type(key).__name__}; make one with fd keygen")
    return key


def load_trusted_keys(folder: str | os.PathLike) -> dict[str, object]:
    """``{key_id: public key}`` for every ``*.pub`` file in ``folder``."""
    ed25519, serialization, _ = _crypto()
    folder = Path(folder)
    if not folder.is_dir():
        raise FdError(f"{folder}: --trusted-keys must be a folder of NAME.pub files")
    keys = {}
    for path in sorted(folder.glob("*.pub")):
        data = read_regular(path, 1 << 16, "key file")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise FdError(f"{path}: not a PEM public key ({exc})") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise FdError(f"{path}: expected an Ed25519 public key, found {type(key).__name__}")
        keys[key_id(_raw_public(key))] = key
    if not keys:
        raise FdError(f"{folder}: holds no *.pub key files; copy in the institutions' public "
                      "keys (fd keygen makes them)")
    return keys


def signature_document(manifest: bytes, private_key) -> bytes:
    """The ``signature.json`` bytes that sign ``manifest`` with ``private_key``."""
    raw = _raw_public(private_key.public_key())
    doc = {"format": SIGNATURE_FORMAT, "version": 1, "algorithm": "ed25519",
           "key_id": key_id(raw), "public_key": base64.b64encode(raw).decode(),
           "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
           "signature": base64.b64encode(private_key.sign(manifest)).decode()}
    return (json.dumps(doc, indent=2) + "\n").encode()


def check_signature(bundle: str | os.PathLike, manifest: bytes,
                    trusted: dict[str, object] | None,
                    limits: Limits = DEFAULT_LIMITS) -> str | None:
    """The key id that signed the bundle at ``bundle`` (whose manifest bytes are
    ``manifest``), or None when it is unsigned and no ``trusted`` keys are required.

    Raises BundleError, naming the bundle and the reason, when the signature is malformed or
    does not match the manifest, and, with ``trusted`` keys, when the bundle is unsigned or
    signed by a key not among them."""
    where = Path(bundle) / SIGNATURE
    try:
        data = read_regular(where, limits.max_manifest_bytes, "max_manifest_bytes")
    except FileNotFoundError:
        if trusted is not None:
            raise BundleError(f"{bundle}: unsigned (no {SIGNATURE}); --trusted-keys accepts "
                              "only bundles signed with fd emit-logits --sign-key") from None
        return None
    ed25519, _, InvalidSignature = _crypto()
    doc = parse_json(data, where, limits)
    fields = ("key_id", "public_key", "signature", "manifest_sha256")
    if not (isinstance(doc, dict) and doc.get("format") == SIGNATURE_FORMAT
            and doc.get("algorithm") == "ed25519"
            and all(isinstance(doc.get(k), str) for k in fields)):
        raise BundleError(f"{where}: expected an {SIGNATURE_FORMAT} document with algorithm "
                          f"'ed25519' and string fields {list(fields)}")
    try:
        raw = base64.b64decode(doc["public_key"], validate=True)
        sig = base64.b64decode(doc["signature"], validate=True)
        public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise BundleError(f"{where}: malformed public key or signature ({exc})") from None
    kid = key_id(raw)
    if doc["key_id"] != kid:
        raise BundleError(f"{where}: key_id {quoted(doc['key_id'], 60)} does not name its "
                          f"public key ({kid})")
    if trusted is not None:
        if kid not in trusted:
            raise BundleError(f"{bundle}: signed by {kid}, which is not among the trusted keys "
                              f"({', '.join(sorted(trusted))})")
        public = trusted[kid]
    try:
        public.verify(sig, manifest)
    except InvalidSignature:
        raise BundleError(f"{bundle}: the signature by {kid} does not match manifest.json; the "
                          "bundle was altered after it was signed") from None
    return kid
