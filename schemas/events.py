"""Records exchanged on the topics, and the one place where click events are validated.

Everything travels as JSON (orjson). Decoding happens at the edge, from raw bytes, so a
consumer still holds the original bytes when an event has to go to the dead-letter topic.
"""

from __future__ import annotations

import dataclasses
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
    """A rejected event: its original bytes (as latin-1 text, lossless), origin and reason."""

    reason: str
    topic: str
    partition: int
    offset: int
    original: bytes
    key: bytes | None = None
    rejected_at: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            # latin-1 maps every byte to one code point, so any payload survives the trip.
            "original": self.original.decode("latin-1"),
            "key": None if self.key is None else self.key.decode("latin-1"),
            "rejected_at": self.rejected_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeadLetter:
        return cls(
            reason=d["reason"],
            topic=d["topic"],
            partition=int(d["partition"]),
            offset=int(d["offset"]),
            original=d["original"].encode("latin-1"),
            key=None if d.get("key") is None else d["key"].encode("latin-1"),
            rejected_at=int(d["rejected_at"]),
        )


@dataclass(frozen=True)
class ModelUpdate:
    """Announces a promoted model version on `model-updates` (key = "model")."""

    version: str
    artifact_uri: str  # a directory path, or later an object-store URI
    checksum: str  # sha256 of the artifact manifest file
    metrics: dict[str, float]
    created_at: int  # epoch ms

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelUpdate:
        try:
            return cls(
                version=_require_id(d, "version", MAX_ID_CHARS),
                artifact_uri=_require_id(d, "artifact_uri", 4096),
                checksum=_require_id(d, "checksum", 128),
                metrics={str(k): float(v) for k, v in dict(d.get("metrics") or {}).items()},
                created_at=int(d["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError("model_update", f"malformed: {exc}") from exc


def encode(record: ClickEvent | Recommendation | DeadLetter | ModelUpdate) -> bytes:
    return orjson.dumps(record.to_dict())


# --- click validation -------------------------------------------------------------------


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
