"""OpenSSF Model Signing v1.0 for fd's folders (bundles, consensus, specialists, students),
through the ``model-signing`` package: ``model.sig`` inside the folder signs the sha256 of
every other file (``signature.json`` and ``model.sig`` itself excepted) with an ECDSA key.

``model_signing verify key FOLDER --signature FOLDER/model.sig --public_key NAME.pub`` (that
package's own command) accepts what :func:`sign` writes; fd checks it with the same library
(:func:`check`)."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from ..errors import BundleError
from .manifest import SIGNATURE, STANDARD_SIGNATURE
from .safeio import DEFAULT_LIMITS, Limits, parse_json, read_regular

#: files that a signature does not cover (the signatures themselves)
UNSIGNED = (STANDARD_SIGNATURE, SIGNATURE)


def _hashing():
    import model_signing

    return model_signing.hashing.Config().use_file_serialization().set_ignored_paths(
        paths=list(UNSIGNED))


def sign(folder: Path, private_key: Path) -> None:
    """Write ``folder/model.sig``, signed with the ECDSA key in the PEM file ``private_key``."""
    import model_signing

    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key) \
        .set_hashing_config(_hashing()).sign(folder, folder / STANDARD_SIGNATURE)


def _statement(folder: Path, limits: Limits) -> tuple[str, dict[str, str]]:
    """The key hint of ``model.sig`` and the file digests its statement lists (unverified)."""
    where = folder / STANDARD_SIGNATURE
    doc = parse_json(read_regular(where, limits.max_manifest_bytes, "max_manifest_bytes"),
                     where, limits)
    try:
        hint = doc["verificationMaterial"]["publicKey"]["hint"]
        payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"], validate=True))
        resources = payload["predicate"]["resources"]
        digests = {r["name"]: r["digest"] for r in resources if r["algorithm"] == "sha256"}
        if not isinstance(hint, str) or len(digests) != len(resources):
            raise ValueError("a key hint and sha256 digests")
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BundleError(f"{where}: not an OpenSSF model signature made with a key "
                          f"(a Sigstore bundle with a DSSE envelope and a key hint): "
                          f"{type(exc).__name__} {exc}") from None
    return hint, digests


def check(folder: Path, trusted: dict | None, limits: Limits = DEFAULT_LIMITS) -> str:
    """The id of the key that signed ``folder``'s ``model.sig``. With ``trusted`` keys
    (:func:`~fdcli.bundle.signing.load_trusted_keys`) the signature is verified by
    model-signing with the trusted key its hint names; without, only the files' digests are
    checked against the statement (no key vouches for them)."""
    from .signing import public_hint

    hint, digests = _statement(folder, limits)
    kid = "ecdsa:" + hint[:16]
    if trusted is None:
        found = {rd.identifier: rd.digest.digest_hex for rd in
                 _hashing().hash(folder).resource_descriptors()}
        if found != digests:
            raise BundleError(f"{folder}: {_difference(found, digests)}; the folder was "
                              "altered after it was signed")
        return kid
    keys = [k for k in trusted.values() if k.standard and public_hint(k.key) == hint]
    if not keys:
        raise BundleError(f"{folder}: signed by {kid}, which is not among the trusted keys "
                          f"({', '.join(sorted(trusted))})")
    import model_signing

    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys[0].path) \
            .set_hashing_config(_hashing()).verify(folder, folder / STANDARD_SIGNATURE)
    except Exception as exc:  # model-signing raises ValueError and the crypto errors
        raise BundleError(f"{folder}: the signature by {kid} does not match ({exc}); the "
                          "folder was altered after it was signed") from None
    return kid


def _difference(found: dict[str, str], signed: dict[str, str]) -> str:
    changed = sorted(n for n in found.keys() & signed.keys() if found[n] != signed[n])
    added, missing = sorted(found.keys() - signed.keys()), sorted(signed.keys() - found.keys())
    parts = [f"{what}: {names[:3]}" for what, names in (
        ("changed", changed), ("not signed", added), ("missing", missing)) if names]
    return "files " + "; ".join(parts)
