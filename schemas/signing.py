"""HMAC signatures on model announcements, shared by the publishers and the workers.

A ModelUpdate says which artifact to serve; its `checksum` proves integrity (the manifest
did not change), not origin: anyone who may write to `model-updates` can announce any
artifact. With a shared secret key, `publish`/`retrain --model-key-file` sign each
announcement and `worker --model-key-file` refuses one without a valid signature.

The signature is HMAC-SHA256 over a canonical encoding of every other field (`rollback` only
when true, so older signatures stay valid; sorted keys,
orjson's float formatting, a domain tag so the bytes mean nothing elsewhere), carried as
`"hmac-sha256:<hex>"` in the record's optional `signature` field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from pathlib import Path

import orjson

from schemas.events import ModelUpdate

SCHEME = "hmac-sha256"
_DOMAIN = b"gru4stream model-update v1\n"
MIN_KEY_BYTES = 16


class KeyFileError(ValueError):
    """An unusable key file. The message names the file, never its content."""


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key: the file's bytes without surrounding whitespace (a trailing newline)."""
    where = Path(path)
    try:
        key = where.read_bytes().strip()
    except OSError as exc:
        raise KeyFileError(f"{where}: cannot read the model key file: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{where}: a model key needs at least {MIN_KEY_BYTES} bytes")
    return key


def canonical_bytes(update: ModelUpdate) -> bytes:
    """What is signed: every field but the signature, in one fixed encoding."""
    fields = dataclasses.asdict(update)
    fields.pop("signature", None)
    if not fields.get("rollback"):
        # Signed when set; left out when false so that signatures made before the field
        # existed still verify (the canonical bytes are then unchanged).
        fields.pop("rollback", None)
    return _DOMAIN + orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def signature_for(update: ModelUpdate, key: bytes) -> str:
    digest = hmac.new(key, canonical_bytes(update), hashlib.sha256).hexdigest()
    return f"{SCHEME}:{digest}"


def sign_update(update: ModelUpdate, key: bytes) -> ModelUpdate:
    return dataclasses.replace(update, signature=signature_for(update, key))


def verify_update(update: ModelUpdate, key: bytes) -> str | None:
    """None when the signature is valid, else why not (the key is never part of it)."""
    if update.signature is None:
        return "the announcement is not signed"
    # Constant-time on the whole string: a mismatch reveals nothing about where it starts.
    if not hmac.compare_digest(update.signature.encode(), signature_for(update, key).encode()):
        return "the signature does not match (another key, or a changed announcement)"
    return None
