"""Durations as operators write them: "250ms", "90s", "30m", "6h", "30d", "2w"."""

from __future__ import annotations

import re

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration_ms(text: str, *, bare_unit: str | None = None, zero_ok: bool = False) -> float:
    """A duration in milliseconds: positive, or zero where `zero_ok` (e.g. "no wait").

    A number without a unit is read in `bare_unit` (e.g. "s"), or refused when it is None.
    """
    match = _DURATION.match(text)
    unit = None if match is None else (match.group(2) or bare_unit)
    if match is None or unit is None:
        raise ValueError(
            f"{text!r} is not a duration: a number and a unit, one of ms, s, m, h, d, w "
            "(e.g. 250ms, 90s, 30m, 6h, 30d)"
        )
    value = float(match.group(1)) * UNITS_MS[unit]
    if value == 0 and not zero_ok:
        raise ValueError(f"{text!r}: a duration must be positive")
    return value


def format_duration(ms: int) -> str:
    """The largest whole unit: 2_592_000_000 -> "30d", 1500 -> "1500ms"."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms >= UNITS_MS[unit] and ms % UNITS_MS[unit] == 0:
            return f"{ms // UNITS_MS[unit]}{unit}"
    return f"{ms}ms"
