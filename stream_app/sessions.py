"""What the `sessions` table keeps per session, and its byte encoding.

A value is: a fixed prefix (JSON length, event time of the last click, partition; little-
endian), the JSON header, the GRU hidden state as raw float32 (n_layers * H_max values), then
the last answer as it was sent (its JSON bytes, kept whole: never parsed or built again on
the batch path). Values written before the answer moved there hold it in the header ("r").
The prefix lets the expiry scan read a session's age without decoding it (older values hold
the wall time of their last update there; decoding reads the header's fields). The header
holds the recent item history as external ids, so the state can be recomputed under a model
with another vocabulary, plus the offsets those clicks had, for answering a redelivered
click after a crash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

_PREFIX = struct.Struct("<Iqi")  # header length, last_event_ms, partition


class SessionDecodeError(ValueError):
    """A table value that is not a session record (corrupt or from an incompatible build)."""


@dataclass
class SessionState:
    partition: int  # clicks partition of this session (its key's partition)
    items: list[str] = field(default_factory=list)  # recent external item ids, oldest first
    offsets: list[int] = field(default_factory=list)  # clicks offsets of `items`
    last_event_ms: int = 0  # event time of the newest accepted click
    touched_ms: int = 0  # wall time when the session was last updated (shown, not for expiry)
    count: int = 0  # accepted clicks over the session's life (history may be shorter)
    model_version: str | None = None  # the version `hidden` was computed with
    hidden: np.ndarray | None = None  # (n_layers, H_max) float32, a cache of the GRU state
    last_answer: bytes | None = None  # the last answer's record value (Recommendation JSON)
    # `items` as internal indices of model `seen_version`: the batch path's copy, so that a
    # click's seen items are not looked up again for every click. Never stored; rebuilt
    # after a decode or a model swap.
    seen: list[int] | None = field(default=None, compare=False, repr=False)
    seen_version: str | None = field(default=None, compare=False, repr=False)

    @property
    def last_offset(self) -> int:
        return self.offsets[-1] if self.offsets else -1

    @property
    def last_recommendation(self) -> dict[str, Any] | None:
        """The last answer, parsed (`Recommendation.to_dict()` form)."""
        return None if self.last_answer is None else orjson.loads(self.last_answer)

    def encode(self) -> bytes:
        hidden = self.hidden
        header = {
            "i": self.items,
            "o": self.offsets,
            "t": self.last_event_ms,
            "n": self.count,
            "u": self.touched_ms,
            "v": self.model_version,
            "s": None if hidden is None else list(hidden.shape),
            "a": self.last_answer is not None,
        }
        meta = orjson.dumps(header)
        body = b"" if hidden is None else np.ascontiguousarray(hidden, np.float32).tobytes()
        prefix = _PREFIX.pack(len(meta), self.last_event_ms, self.partition)
        return b"".join((prefix, meta, body, self.last_answer or b""))

    @classmethod
    def decode(cls, raw: bytes) -> SessionState:
        try:
            size, prefix_ms, partition = _PREFIX.unpack_from(raw, 0)
            start = _PREFIX.size
            header = orjson.loads(raw[start : start + size])
            shape = header["s"]
            hidden = None
            end = start + size
            if shape is not None:
                body = raw[end : end + 4 * int(np.prod(shape))]
                hidden = np.frombuffer(body, dtype=np.float32).reshape(shape).copy()
                end += len(body)
            if header.get("a"):
                last_answer = raw[end:]
            elif header.get("r") is not None:  # written before the answer moved to the end
                last_answer = orjson.dumps(header["r"])
            else:
                last_answer = None
            return cls(
                partition=partition,
                items=list(header["i"]),
                offsets=list(header["o"]),
                last_event_ms=int(header["t"]),
                touched_ms=int(header.get("u", prefix_ms)),
                count=int(header["n"]),
                model_version=header["v"],
                hidden=hidden,
                last_answer=last_answer,
            )
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SessionDecodeError(f"not a session record: {exc}") from None


def peek(raw: bytes) -> tuple[int, int] | None:
    """(last_event_ms, partition) of a stored session without decoding it; None if garbage."""
    try:
        _, last_event_ms, partition = _PREFIX.unpack_from(raw, 0)
    except struct.error:
        return None
    return last_event_ms, partition
