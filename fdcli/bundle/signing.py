"""Signatures over bundles and model folders.

The standard format is OpenSSF Model Signing v1.0 (the ``model-signing`` package,
:mod:`fdcli.bundle.openssf`): ``model.sig`` inside the folder, a Sigstore bundle whose DSSE
envelope signs an in-toto statement listing every file's sha256, signed with an ECDSA key
(P-256, P-384 or P-521). Any ``model_signing verify key`` accepts it, offline.

The older format, an Ed25519 signature over the manifest's exact bytes in ``signature.json``::

    {"format": "fd-bundle-signature", "version": 1, "algorithm": "ed25519",
     "key_id": "ed25519:<16 hex>", "public_key": "<base64 of 32 bytes>",
     "manifest_sha256": "<hex>", "signature": "<base64 of 64 bytes>"}

is still written by Ed25519 keys and read, with a notice, for this version only.

Keys are PEM files made by :func:`keygen` (``fd keygen``): ``NAME.key`` (private, PKCS#8,
mode 0600) and ``NAME.pub`` (public). A coordinator trusts the ``*.pub`` files of one folder,
of either kind. ``cryptography`` is imported only here and in :mod:`.openssf`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError, FdError, FdWarning, quoted
from .manifest import SIGNATURE, STANDARD_SIGNATURE
from .safeio import DEFAULT_LIMITS, Limits, parse_json, read_regular
from .shards import write_file_atomic

SIGNATURE_FORMAT = "fd-bundle-signature"
#: ``fd keygen --algorithm`` -> the curve (None: Ed25519, the older format)
ALGORITHMS = {"ecdsa-p256": "SECP256R1", "ecdsa-p384": "SECP384R1", "ecdsa-p521": "SECP521R1",
              "ed25519": None}
LEGACY_NOTICE = ("{where} is signed in fd's older Ed25519 format (signature.json), which this "
                 "version still reads and the next will not; sign with an ECDSA key from fd "
                 "keygen (OpenSSF Model Signing, model.sig)")


def _crypto():
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    return ed25519, ec, serialization, InvalidSignature


@dataclass(frozen=True)
class Key:
    """A loaded key (private or public), the file it came from and its id."""

    path: Path
    key: object
    key_id: str

    @property
    def standard(self) -> bool:
        """An ECDSA key, which signs in the OpenSSF format; else Ed25519 (the older one)."""
        _, ec, _, _ = _crypto()
        return isinstance(self.key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))


def key_id(public_key) -> str:
    """A short, stable name for a public key: ``ed25519:`` and 16 hex digits of the sha256 of
    its raw bytes, or ``ecdsa:`` and 16 hex digits of the sha256 of its PEM
    (SubjectPublicKeyInfo), the hint that model-signing writes into ``model.sig``."""
    ed25519, ec, serialization, _ = _crypto()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw)
        return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
    return "ecdsa:" + public_hint(public_key)[:16]


def public_hint(public_key) -> str:
    """The sha256 (hex) of the key's PEM SubjectPublicKeyInfo: model.sig's key hint."""
    _, _, serialization, _ = _crypto()
    pem = public_key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def keygen(out_dir: str | os.PathLike, name: str, overwrite: bool = False,
           algorithm: str = "ecdsa-p256") -> dict[str, str]:
    """Write a new key pair ``NAME.key`` (private, mode 0600) and ``NAME.pub`` into
    ``out_dir``: ``{"private", "public", "key_id", "algorithm"}``."""
    ed25519, ec, serialization, _ = _crypto()
    if algorithm not in ALGORITHMS:
        raise FdError(f"--algorithm must be one of {list(ALGORITHMS)}, got {algorithm!r}")
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise FdError(f"--name {name!r}: expected a plain file name")
    out = Path(out_dir)
    private, public = out / f"{name}.key", out / f"{name}.pub"
    for path in (private, public):
        if path.exists() and not overwrite:
            raise FdError(f"{path}: already exists; choose another --name or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    curve = ALGORITHMS[algorithm]
    key = ed25519.Ed25519PrivateKey.generate() if curve is None else \
        ec.generate_private_key(getattr(ec, curve)())
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
    return {"private": str(private), "public": str(public), "algorithm": algorithm,
            "key_id": key_id(key.public_key())}


def _supported(key, public: bool) -> bool:
    ed25519, ec, _, _ = _crypto()
    kinds = (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey) if public else \
        (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return key.curve.name in ("secp256r1", "secp384r1", "secp521r1")
    return isinstance(key, kinds)


def load_private_key(path: str | os.PathLike) -> Key:
    """A private key (ECDSA P-256/384/521, or Ed25519) from a PEM file made by
    :func:`keygen`."""
    _, _, serialization, _ = _crypto()
    path = Path(path)
    try:
        data = read_regular(path, 1 << 16, "key file")
    except FileNotFoundError:
        raise FdError(f"{path}: no such key file; make one with fd keygen") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise FdError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not _supported(key, public=False):
        raise FdError(f"{path}: expected an ECDSA (P-256, P-384 or P-521) or Ed25519 private "
                      f"key, found {type(key).__name__}; make one with fd keygen")
    return Key(path, key, key_id(key.public_key()))


def load_trusted_keys(folder: str | os.PathLike) -> dict[str, Key]:
    """``{key_id: Key}`` for every ``*.pub`` file in ``folder`` (ECDSA or Ed25519)."""
    _, _, serialization, _ = _crypto()
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
        if not _supported(key, public=True):
            raise FdError(f"{path}: expected an ECDSA (P-256, P-384 or P-521) or Ed25519 "
                          f"public key, found {type(key).__name__}")
        found = Key(path, key, key_id(key))
        keys[found.key_id] = found
    if not keys:
        raise FdError(f"{folder}: holds no *.pub key files; copy in the institutions' public "
                      "keys (fd keygen makes them)")
    return keys


def sign_folder(folder: Path, manifest: bytes | None, sign_key: Key) -> None:
    """Sign the finished ``folder`` (a bundle, whose manifest bytes are ``manifest``, or a
    model folder): ``model.sig`` with an ECDSA key, ``signature.json`` (over the manifest; a
    bundle only) with an Ed25519 key."""
    if sign_key.standard:
        from .openssf import sign

        sign(folder, sign_key.path)
        return
    if manifest is None:
        raise FdError(f"{sign_key.path}: an Ed25519 key signs bundles only (fd's older "
                      "format); sign a model folder with an ECDSA key from fd keygen")
    warnings.warn(LEGACY_NOTICE.format(where=f"{folder.name}, signed with {sign_key.path},"),
                  FdWarning, stacklevel=2)
    write_file_atomic(folder / SIGNATURE, signature_document(manifest, sign_key))


def signature_document(manifest: bytes, private_key: Key) -> bytes:
    """The ``signature.json`` bytes that sign ``manifest`` with an Ed25519 key."""
    _, _, serialization, _ = _crypto()
    key = private_key.key
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    doc = {"format": SIGNATURE_FORMAT, "version": 1, "algorithm": "ed25519",
           "key_id": private_key.key_id, "public_key": base64.b64encode(raw).decode(),
           "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
           "signature": base64.b64encode(key.sign(manifest)).decode()}
    return (json.dumps(doc, indent=2) + "\n").encode()


def check_signature(bundle: str | os.PathLike, manifest: bytes | None,
                    trusted: dict[str, Key] | None,
                    limits: Limits = DEFAULT_LIMITS) -> str | None:
    """The key id that signed the folder at ``bundle`` (a bundle whose manifest bytes are
    ``manifest``, or a model folder), or None when it is unsigned and no ``trusted`` keys are
    required.

    ``model.sig`` (OpenSSF) is checked first: with ``trusted`` keys, by model-signing with the
    key its hint names; without, every file's digest against the signed statement (integrity;
    no key vouches for it). Else ``signature.json`` (Ed25519, with a notice).

    Raises BundleError, naming the folder and the reason, when the signature is malformed or
    does not match, and, with ``trusted`` keys, when the folder is unsigned or signed by a
    key not among them."""
    folder = Path(bundle)
    if (folder / STANDARD_SIGNATURE).exists() or (folder / STANDARD_SIGNATURE).is_symlink():
        from .openssf import check

        return check(folder, trusted, limits)
    where = folder / SIGNATURE
    try:
        data = read_regular(where, limits.max_manifest_bytes, "max_manifest_bytes")
    except FileNotFoundError:
        if trusted is not None:
            raise BundleError(f"{bundle}: unsigned (no {STANDARD_SIGNATURE}); --trusted-keys "
                              "accepts only folders signed with --sign-key") from None
        return None
    if manifest is None:
        raise BundleError(f"{where}: fd's older signature format signs bundles only")
    warnings.warn(LEGACY_NOTICE.format(where=bundle), FdWarning, stacklevel=2)
    return _check_legacy(bundle, where, data, manifest, trusted, limits)


def _check_legacy(bundle, where: Path, data: bytes, manifest: bytes,
                  trusted: dict[str, Key] | None, limits: Limits) -> str:
    ed25519, _, _, InvalidSignature = _crypto()
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
    kid = key_id(public)
    if doc["key_id"] != kid:
        raise BundleError(f"{where}: key_id {quoted(doc['key_id'], 60)} does not name its "
                          f"public key ({kid})")
    if trusted is not None:
        if kid not in trusted:
            raise BundleError(f"{bundle}: signed by {kid}, which is not among the trusted keys "
                              f"({', '.join(sorted(trusted))})")
        public = trusted[kid].key
    try:
        public.verify(sig, manifest)
    except InvalidSignature:
        raise BundleError(f"{bundle}: the signature by {kid} does not match manifest.json; the "
                          "bundle was altered after it was signed") from None
    return kid
