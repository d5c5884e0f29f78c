"""Client ids: the name an institution's bundles carry, by which the coordinator counts each
institution's vote on an example once.

An id that two institutions share by accident makes ``fd aggregate`` refuse them as one client
voting twice, so the defaults must differ between institutions that follow the same
instructions (and so name their folders alike), while staying the same across one
institution's rounds and re-emissions.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Mapping

SUFFIX_HEX = 6  # 16.7M values: two of a thousand institutions collide with p ~ 3e-2 %


def _folder_name(path: str | Path) -> str:
    return Path(path).resolve().name or "model"


def specialist_client_id(given: str | None, previous: Mapping[str, Any],
                         out: str | Path) -> str:
    """The client id a newly trained specialist records in its ``fd.json``.

    ``given`` (``--client-id``) wins. Otherwise a specialist that continues one of this
    institution's specialists (a later round: ``previous`` is that model's ``fd.json``, whose
    ``stage`` is ``train-specialist``) keeps its id. Otherwise the id is the output folder's
    name plus six hex digits drawn here from the operating system's randomness, not from the
    seeded generators (every institution seeds them alike), e.g. ``specialist-1-3f9a2c``. A
    model from another stage (the coordinator's student, which every institution may start
    from) passes no id on.

    >>> specialist_client_id("hospital-a", {}, "specialist-1")
    'hospital-a'
    >>> specialist_client_id(None, {"stage": "train-specialist", "client_id": "x-1a2b3c"}, "s2")
    'x-1a2b3c'
    """
    if given:
        return given
    kept = previous.get("client_id")
    if previous.get("stage") == "train-specialist" and isinstance(kept, str) and kept:
        return kept
    return f"{_folder_name(out)}-{secrets.token_hex(SUFFIX_HEX // 2)}"


def emitted_client_id(given: str | None, meta: Mapping[str, Any], model: str | Path,
                      model_fingerprint: str) -> str:
    """The client id a bundle emitted from ``model`` carries: ``given`` (``--client-id``), else
    the id in the model's ``fd.json`` (``meta``), else, for a model folder fd did not write
    (no ``fd.json`` to keep a drawn id in), the folder's name plus the first six hex digits
    of the model's fingerprint: the same model always gets the same id, two different models
    different ones.

    >>> emitted_client_id(None, {}, "models/bert", "sha256:0123456789abcdef")
    'bert-012345'
    """
    if given:
        return given
    kept = meta.get("client_id")
    if isinstance(kept, str) and kept:
        return kept
    digits = model_fingerprint.rsplit(":", 1)[-1][:SUFFIX_HEX]
    return f"{_folder_name(model)}-{digits}"
