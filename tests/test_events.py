"""The click contract: valid clicks survive a round trip, anything else is a ValidationError
naming the field at fault, and nothing else is ever raised."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.events import (
    DAY_MS,
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MIN_TIMESTAMP_MS,
    ClickEvent,
    ValidationError,
    decode_click,
    encode_click,
    parse_time_text,
    validate_click,
)

NOW_MS = 1_790_000_000_000  # a fixed "now" (2026-09-21) so the tests do not depend on the clock
FIELDS = ("event", "session_id", "item_id", "timestamp", "event_type", "user_id")
ID_FIELDS = ("session_id", "item_id", "event_type", "user_id")

ids = st.text(min_size=1, max_size=MAX_ID_CHARS).filter(lambda s: s.strip() != "")
valid_ts = st.integers(MIN_TIMESTAMP_MS, NOW_MS + DAY_MS)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
json_scalars |= st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def decode(d: object, **kw) -> ClickEvent:
    return decode_click(orjson.dumps(d), now_ms=NOW_MS, **kw)


def valid_dict(**override) -> dict:
    d = {"session_id": "s1", "item_id": "i1", "timestamp": NOW_MS - 1000}
    d.update(override)
    return d


def assert_rejected(d_or_raw: object, field: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        if isinstance(d_or_raw, bytes | bytearray | memoryview):
            decode_click(d_or_raw, now_ms=NOW_MS)
        else:
            decode(d_or_raw)
    exc = info.value
    assert exc.field == field, str(exc)
    assert str(exc).startswith(f"{field}: ") and exc.reason
    assert "\n" not in str(exc) and len(str(exc)) <= 200  # a one-line reason for the DLQ
    return exc


def assert_well_formed(exc: ValidationError) -> None:
    assert exc.field in FIELDS and str(exc).startswith(f"{exc.field}: ")
    assert "\n" not in str(exc) and len(str(exc)) <= 200


# --- valid clicks -------------------------------------------------------------------------------


@st.composite
def clicks(draw) -> ClickEvent:
    return ClickEvent(
        session_id=draw(ids),
        item_id=draw(ids),
        timestamp=draw(valid_ts),
        event_type=draw(st.none() | ids),
        user_id=draw(st.none() | ids),
    )


@given(clicks())
@example(ClickEvent("s", "i", MIN_TIMESTAMP_MS))
@example(ClickEvent("s" * MAX_ID_CHARS, "i" * MAX_ID_CHARS, NOW_MS + DAY_MS, "view", "u"))
def test_valid_click_round_trips(event: ClickEvent) -> None:
    raw = encode_click(event)
    assert decode_click(raw, now_ms=NOW_MS) == event
    assert decode_click(bytearray(raw), now_ms=NOW_MS) == event
    assert decode_click(memoryview(raw), now_ms=NOW_MS) == event


@given(st.integers(-(2**63), 2**63 - 1), valid_ts)
def test_integer_ids_are_kept_as_strings(item: int, ts: int) -> None:
    event = decode(valid_dict(item_id=item, timestamp=ts, user_id=item, event_type=7))
    assert event.item_id == str(item) and event.user_id == str(item) and event.event_type == "7"
    assert event.timestamp == ts


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 2), max_value=datetime(2026, 9, 1), timezones=st.just(UTC)
    ),
    st.integers(-14 * 60, 14 * 60),
)
def test_iso_timestamps_equal_their_epoch_milliseconds(when: datetime, offset_min: int) -> None:
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    expected = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    local = when.astimezone(timezone(timedelta(minutes=offset_min)))
    assert decode(valid_dict(timestamp=local.isoformat())).timestamp == expected
    zulu = when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    assert decode(valid_dict(timestamp=zulu)).timestamp == expected


def test_integral_float_timestamp_is_accepted() -> None:
    assert decode(valid_dict(timestamp=float(NOW_MS))).timestamp == NOW_MS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1790000000000", NOW_MS),
        (" 1790000000000 ", NOW_MS),
        ("-5", -5),
        ("2026-09-21", 1_789_948_800_000),
        ("2026-09-21T14:13:20Z", NOW_MS),
        ("2026-09-21T16:13:20+02:00", NOW_MS),
    ],
)
def test_command_line_times_are_milliseconds_or_iso(text: str, expected: int) -> None:
    assert parse_time_text(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "12h", "2026-13-01", "1.5"])
def test_command_line_times_that_are_neither_are_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="timestamp"):
        parse_time_text(text)


# --- nothing but ValidationError ----------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff\xfe")
@example(b"null")
@example(b"[]")
@example(b'{"session_id": "s", "item_id": 1, "timestamp": 1e999}')
@example(b'{"session_id": "s", "item_id": 123456789012345678901234567890, "timestamp": 1}')
@example(b'{"session_id": "\\ud800", "item_id": 1, "timestamp": 1}')
def test_random_bytes_raise_only_validation_errors(raw: bytes) -> None:
    try:
        decode_click(raw, now_ms=NOW_MS)
    except ValidationError as exc:
        assert_well_formed(exc)


@given(json_values)
def test_random_json_values_raise_only_validation_errors(value: object) -> None:
    try:
        decode(value)
    except ValidationError as exc:
        assert_well_formed(exc)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "session_id": json_values,
            "item_id": json_values,
            "timestamp": json_values,
            "event_type": json_values,
            "user_id": json_values,
        },
    )
)
def test_random_field_values_raise_only_validation_errors(d: dict) -> None:
    try:
        event = decode(d)
    except ValidationError as exc:
        assert_well_formed(exc)
    else:  # whatever got through really meets the contract
        assert isinstance(event.session_id, str) and event.session_id.strip()
        assert isinstance(event.item_id, str) and event.item_id.strip()
        assert MIN_TIMESTAMP_MS <= event.timestamp <= NOW_MS + DAY_MS


def test_null_message_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        decode_click(None)
    assert info.value.field == "event"


# --- each fault names its field -----------------------------------------------------------------

int64 = st.integers(-(2**63), 2**63 - 1)
not_a_string = st.none() | st.booleans() | int64 | st.floats() | st.lists(int64)
not_a_string |= st.dictionaries(st.text(max_size=5), int64, max_size=3)
not_string_or_int = not_a_string.filter(lambda v: not (isinstance(v, int) and type(v) is not bool))


@given(not_a_string.filter(lambda v: not isinstance(v, float) or math.isfinite(v)))
def test_session_id_must_be_a_string(value: object) -> None:
    assert_rejected(valid_dict(session_id=value), "session_id")


@given(not_string_or_int.filter(lambda v: not isinstance(v, float) or math.isfinite(v)))
def test_item_id_must_be_string_or_integer(value: object) -> None:
    assert_rejected(valid_dict(item_id=value), "item_id")


@given(
    st.sampled_from(("event_type", "user_id")),
    not_string_or_int.filter(
        lambda v: v is not None and (not isinstance(v, float) or math.isfinite(v))
    ),
)
def test_optional_ids_must_be_string_or_integer(field: str, value: object) -> None:
    assert_rejected(valid_dict(**{field: value}), field)


@given(st.sampled_from(ID_FIELDS), st.text(alphabet=" \t\n\r", max_size=5))
def test_blank_ids_are_rejected(field: str, blank: str) -> None:
    assert_rejected(valid_dict(**{field: blank}), field)


@given(st.sets(st.sampled_from(("session_id", "item_id", "timestamp")), min_size=1))
def test_missing_required_fields_are_named(missing: set[str]) -> None:
    d = {k: v for k, v in valid_dict().items() if k not in missing}
    first = next(f for f in ("session_id", "item_id", "timestamp") if f in missing)
    exc = assert_rejected(d, first)
    assert exc.reason == "missing"


@given(st.sampled_from(ID_FIELDS), st.integers(MAX_ID_CHARS + 1, 4 * MAX_ID_CHARS))
def test_oversized_ids_are_rejected(field: str, length: int) -> None:
    exc = assert_rejected(valid_dict(**{field: "x" * length}), field)
    assert str(length) in exc.reason


@given(st.integers(0, 3 * MAX_EVENT_BYTES))
def test_oversized_events_are_rejected(extra: int) -> None:
    raw = orjson.dumps(valid_dict(padding="p" * (MAX_EVENT_BYTES + extra)))
    exc = assert_rejected(raw, "event")
    assert str(MAX_EVENT_BYTES) in exc.reason


def test_event_at_the_size_limit_is_accepted() -> None:
    base = len(orjson.dumps(valid_dict(padding="")))
    raw = orjson.dumps(valid_dict(padding="p" * (MAX_EVENT_BYTES - base)))
    assert len(raw) == MAX_EVENT_BYTES
    assert decode_click(raw, now_ms=NOW_MS).session_id == "s1"


@given(st.integers(-(2**63), MIN_TIMESTAMP_MS - 1))
@example(MIN_TIMESTAMP_MS - 1)
@example(874_724_843_000)  # a MovieLens-100K time (1997), in milliseconds
@example(1_577_836_800)  # 2020 in seconds: the classic unit mistake
def test_timestamps_before_2000_are_rejected(ts: int) -> None:
    assert_rejected(valid_dict(timestamp=ts), "timestamp")


@given(st.integers(NOW_MS + DAY_MS + 1, 2**63 - 1))
@example(NOW_MS + DAY_MS + 1)
@example(1e300)
@example(-1e300)
def test_timestamps_more_than_a_day_ahead_or_out_of_range_are_rejected(ts: int) -> None:
    assert_rejected(valid_dict(timestamp=ts), "timestamp")


@given(
    st.sampled_from(
        [True, False, math.nan, math.inf, -math.inf, 1.5e12 + 0.5, None, [NOW_MS], {"ms": NOW_MS}]
    )
)
def test_non_numeric_timestamps_are_rejected(value: object) -> None:
    # orjson writes NaN and infinities as null, so the Python value is validated directly too.
    with pytest.raises(ValidationError) as info:
        validate_click(valid_dict(timestamp=value), now_ms=NOW_MS)
    assert info.value.field == "timestamp"
    if not (isinstance(value, float) and not math.isfinite(value)):
        assert_rejected(valid_dict(timestamp=value), "timestamp")


@given(
    st.text(max_size=40).filter(lambda s: not _is_iso(s))
    | st.sampled_from(
        [
            "",
            " ",
            "yesterday",
            "2020-13-01",
            "2020-02-30T00:00:00Z",
            "2020-01-01T25:00",
            "1577836800000",
        ]
    )
)
def test_bad_iso_strings_are_rejected(text: str) -> None:
    exc = assert_rejected(valid_dict(timestamp=text), "timestamp")
    assert "ISO 8601" in exc.reason


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text.strip().removesuffix("Z").removesuffix("z"))
    except ValueError:
        return False
    return True
