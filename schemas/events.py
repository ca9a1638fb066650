"""Records exchanged on the topics, and the one place where click events are validated.

Everything travels as JSON (orjson). Decoding happens at the edge, from raw bytes, so a
consumer still holds the original bytes when an event has to go to the dead-letter topic.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256
# 2000-01-01T00:00:00Z: anything earlier is a unit mistake (seconds sent as ms) or junk.
MIN_TIMESTAMP_MS = 946_684_800_000
DAY_MS = 86_400_000
SCHEMA_VERSION = 1
# Dead letters (contract version 2) keep at most this much of the rejected value and key,
# and a reason this long, so that one always fits far below the producer's request limit.
DEAD_LETTER_VERSION = 2
DEAD_LETTER_PREFIX_BYTES = 8 * 1024
DEAD_LETTER_KEY_BYTES = 1024
MAX_REASON_CHARS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ValidationError(ValueError):
    """An event broke the contract. `field` names the culprit (or "event" for the whole)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds applied to every click; the defaults are the documented contract."""

    min_timestamp_ms: int = MIN_TIMESTAMP_MS
    max_future_ms: int = DAY_MS
    max_event_bytes: int = MAX_EVENT_BYTES
    max_id_chars: int = MAX_ID_CHARS


DEFAULT_LIMITS = ValidationLimits()


@dataclass(frozen=True)
class ClickEvent:
    """One click. `item_id` is the external id, always as a string (ints are converted)."""

    session_id: str
    item_id: str
    timestamp: int  # epoch milliseconds, UTC
    event_type: str | None = None
    user_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "session_id": self.session_id,
            "item_id": self.item_id,
            "timestamp": self.timestamp,
        }
        if self.event_type is not None:
            out["event_type"] = self.event_type
        if self.user_id is not None:
            out["user_id"] = self.user_id
        return out


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    """The answer to one accepted click. (partition, offset) or event_id names that click."""

    session_id: str
    items: tuple[ScoredItem, ...]
    model_version: str
    produced_at: int  # epoch ms
    click_partition: int | None = None
    click_offset: int | None = None
    click_timestamp: int | None = None
    event_id: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "session_id": self.session_id,
            "click": {
                "partition": self.click_partition,
                "offset": self.click_offset,
                "timestamp": self.click_timestamp,
                "event_id": self.event_id,
            },
            "items": [{"item_id": s.item_id, "score": s.score} for s in self.items],
            "model_version": self.model_version,
            "produced_at": self.produced_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recommendation:
        click = d.get("click") or {}
        return cls(
            session_id=d["session_id"],
            items=tuple(ScoredItem(str(i["item_id"]), float(i["score"])) for i in d["items"]),
            model_version=d["model_version"],
            produced_at=int(d["produced_at"]),
            click_partition=click.get("partition"),
            click_offset=click.get("offset"),
            click_timestamp=click.get("timestamp"),
            event_id=click.get("event_id"),
            schema_version=int(d.get("schema_version", SCHEMA_VERSION)),
        )


@dataclass(frozen=True)
class DeadLetter:
    """A rejected event: a bounded prefix of its bytes, their length and sha256, origin, reason.

    Contract version 2 (`"v": 2`): the value travels as base64 of at most a prefix (8 KiB by
    default), so a dead letter stays a few KiB whatever arrived; version 1 carried every byte
    as latin-1 text in JSON, which grew up to 6x and could outgrow the broker's limit.
    `original_len` and `original_sha256` describe the whole value, and topic/partition/offset
    find it on the source topic. Build one with `DeadLetter.of(...)`.
    """

    reason: str
    topic: str
    partition: int
    offset: int
    original: bytes  # the kept prefix; all of the value unless `truncated`
    original_len: int  # of the whole value (a null value counts as b"")
    original_sha256: str  # hex, of the whole value
    key: bytes | None = None  # the message key's prefix (DEAD_LETTER_KEY_BYTES)
    key_len: int | None = None
    rejected_at: int = field(default_factory=lambda: int(time.time() * 1000))
    version: int = DEAD_LETTER_VERSION

    @property
    def truncated(self) -> bool:
        return len(self.original) < self.original_len

    @classmethod
    def of(
        cls,
        reason: str,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None,
        *,
        max_original_bytes: int = DEAD_LETTER_PREFIX_BYTES,
    ) -> DeadLetter:
        value = bytes(value or b"")
        key = None if key is None else bytes(key)
        return cls(
            reason=_bounded_reason(reason),
            topic=topic,
            partition=partition,
            offset=offset,
            original=value[: max(max_original_bytes, 0)],
            original_len=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
            key=None if key is None else key[:DEAD_LETTER_KEY_BYTES],
            key_len=None if key is None else len(key),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": DEAD_LETTER_VERSION,
            "reason": self.reason,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "original_b64": base64.b64encode(self.original).decode("ascii"),
            "original_len": self.original_len,
            "original_sha256": self.original_sha256,
            "truncated": self.truncated,
            "key_b64": None if self.key is None else base64.b64encode(self.key).decode("ascii"),
            "key_len": self.key_len,
            "rejected_at": self.rejected_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeadLetter:
        """Reads version 2, and version 1 records (no "v") still on a topic."""
        version = int(d.get("v", 1))
        if version == 1:
            original = d["original"].encode("latin-1")
            key = None if d.get("key") is None else d["key"].encode("latin-1")
            original_len, sha256 = len(original), hashlib.sha256(original).hexdigest()
            key_len = None if key is None else len(key)
        else:
            original = base64.b64decode(d["original_b64"])
            key = None if d.get("key_b64") is None else base64.b64decode(d["key_b64"])
            original_len, sha256 = int(d["original_len"]), str(d["original_sha256"])
            key_len = None if d.get("key_len") is None else int(d["key_len"])
        return cls(
            reason=d["reason"],
            topic=d["topic"],
            partition=int(d["partition"]),
            offset=int(d["offset"]),
            original=original,
            original_len=original_len,
            original_sha256=sha256,
            key=key,
            key_len=key_len,
            rejected_at=int(d["rejected_at"]),
            version=version,
        )


def _bounded_reason(reason: str) -> str:
    """One line of at most MAX_REASON_CHARS: a reason may quote the bad input."""
    line = " ".join(reason.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


@dataclass(frozen=True)
class ModelUpdate:
    """Announces a promoted model version on `model-updates` (key = "model")."""

    version: str
    artifact_uri: str  # a directory path, or later an object-store URI
    checksum: str  # sha256 of the artifact manifest file
    metrics: dict[str, float]
    created_at: int  # epoch ms
    # "hmac-sha256:<hex>" over the other fields (schemas/signing.py); absent when unsigned.
    signature: str | None = None
    # An operator's rollback (`publish` of a version older than the newest promoted):
    # workers apply it although it moves the version backwards; others must move forward.
    rollback: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.signature is None:
            del out["signature"]  # unsigned records keep their original form
        if not self.rollback:
            del out["rollback"]  # likewise: records without it read as before
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelUpdate:
        try:
            return cls(
                version=_require_id(d, "version", MAX_ID_CHARS),
                artifact_uri=_require_id(d, "artifact_uri", 4096),
                checksum=_require_id(d, "checksum", 128),
                metrics={str(k): float(v) for k, v in dict(d.get("metrics") or {}).items()},
                created_at=int(d["created_at"]),
                signature=(
                    None if d.get("signature") is None else _require_id(d, "signature", 256)
                ),
                rollback=_optional_bool(d, "rollback"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError("model_update", f"malformed: {exc}") from exc


def encode(record: ClickEvent | Recommendation | DeadLetter | ModelUpdate) -> bytes:
    return orjson.dumps(record.to_dict())


# --- click validation -------------------------------------------------------------------


def _optional_bool(d: dict[str, Any], name: str) -> bool:
    value = d.get(name, False)
    if not isinstance(value, bool):
        raise ValidationError(name, f"must be true or false, got {type(value).__name__}")
    return value


def _require_id(d: dict[str, Any], name: str, max_chars: int, *, allow_int: bool = False) -> str:
    if name not in d:
        raise ValidationError(name, "missing")
    value = d[name]
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        kind = "string or integer" if allow_int else "string"
        raise ValidationError(name, f"must be a {kind}, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError(name, "must not be empty")
    if len(value) > max_chars:
        raise ValidationError(name, f"longer than {max_chars} characters ({len(value)})")
    return value


def parse_timestamp(value: Any) -> int:
    """Epoch milliseconds (int, or integral float) or an ISO 8601 string -> epoch ms."""
    if isinstance(value, bool):
        raise ValidationError("timestamp", "must be epoch milliseconds or ISO 8601, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            raise ValidationError("timestamp", f"not an integral number of milliseconds: {value}")
        if abs(value) >= 2**63:  # keeps the reason short: no 300-digit integer in it
            raise ValidationError("timestamp", f"out of the 64-bit millisecond range: {value:.3g}")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError("timestamp", f"not ISO 8601: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # naive times are read as UTC
        # Integer arithmetic: `timestamp() * 1000` loses a millisecond to float rounding.
        return (parsed - _EPOCH) // timedelta(milliseconds=1)
    raise ValidationError(
        "timestamp", f"must be epoch milliseconds or ISO 8601, got {type(value).__name__}"
    )


def parse_time_text(text: str) -> int:
    """A time typed on a command line: epoch milliseconds as digits, else ISO 8601 (naive = UTC)."""
    stripped = text.strip()
    return parse_timestamp(int(stripped) if stripped.lstrip("-").isdigit() else stripped)


def validate_click(
    d: Any, *, limits: ValidationLimits = DEFAULT_LIMITS, now_ms: int | None = None
) -> ClickEvent:
    """Check a decoded JSON value against the click contract; raise ValidationError."""
    if not isinstance(d, dict):
        raise ValidationError("event", f"must be a JSON object, got {type(d).__name__}")
    session_id = _require_id(d, "session_id", limits.max_id_chars)
    item_id = _require_id(d, "item_id", limits.max_id_chars, allow_int=True)
    if "timestamp" not in d:
        raise ValidationError("timestamp", "missing")
    ts = parse_timestamp(d["timestamp"])
    if ts < limits.min_timestamp_ms:
        raise ValidationError("timestamp", f"{ts} is before {limits.min_timestamp_ms} (2000-01-01)")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts > now + limits.max_future_ms:
        raise ValidationError("timestamp", f"{ts} is more than {limits.max_future_ms} ms ahead")
    optional = {}
    for name in ("event_type", "user_id"):
        if d.get(name) is not None:
            optional[name] = _require_id(d, name, limits.max_id_chars, allow_int=True)
    return ClickEvent(session_id=session_id, item_id=item_id, timestamp=ts, **optional)


def decode_click(
    raw: bytes | bytearray | memoryview | None,
    *,
    limits: ValidationLimits = DEFAULT_LIMITS,
    now_ms: int | None = None,
) -> ClickEvent:
    """Raw bytes from `clicks` -> ClickEvent, or ValidationError with a one-line reason."""
    if raw is None:
        raise ValidationError("event", "empty message (null value)")
    if len(raw) > limits.max_event_bytes:
        raise ValidationError("event", f"larger than {limits.max_event_bytes} bytes ({len(raw)})")
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("event", f"not valid JSON: {str(exc)[:80]}") from None
    return validate_click(decoded, limits=limits, now_ms=now_ms)


def encode_click(event: ClickEvent) -> bytes:
    return orjson.dumps(event.to_dict())


def decode_recommendation(raw: bytes) -> Recommendation:
    return Recommendation.from_dict(orjson.loads(raw))


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return DeadLetter.from_dict(orjson.loads(raw))


def decode_model_update(raw: bytes) -> ModelUpdate:
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("model_update", f"not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(d, dict):
        raise ValidationError("model_update", "must be a JSON object")
    return ModelUpdate.from_dict(d)
