"""Clicks from any CSV/TSV (optionally gzip) or Parquet file, with the columns named by the caller.

Parquet needs pyarrow (the `parquet` extra).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from readers.parsing import SECOND_MS, DatasetFormatError
from schemas.events import ClickEvent, ValidationError, parse_timestamp

TIME_UNITS = ("ms", "s", "iso")


def _time_parser(path: Path, time_unit: str):
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {TIME_UNITS}, got {time_unit!r}")

    def parse(value, line: int | None) -> int:
        if time_unit == "iso":
            if not isinstance(value, str):
                value = str(value)
            try:
                return parse_timestamp(value)
            except ValidationError as exc:
                raise DatasetFormatError(path, line, f"timestamp: {exc.reason}") from None
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            number: int | float = int(value)
        else:
            text = str(value).strip()
            try:
                number = int(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    raise DatasetFormatError(
                        path, line, f"timestamp {text[:40]!r} is not a number ({time_unit})"
                    ) from None
        if isinstance(number, float) and not np.isfinite(number):
            raise DatasetFormatError(path, line, f"timestamp {value!r} is not finite")
        if time_unit == "s":
            return int(round(number * SECOND_MS))
        if isinstance(number, float) and not number.is_integer():
            raise DatasetFormatError(path, line, f"timestamp {value!r} is not whole milliseconds")
        return int(number)

    return parse


def _sniff_sep(path: Path, header: str) -> str:
    name = path.name.removesuffix(".gz")
    if name.endswith(".tsv"):
        return "\t"
    for sep in ("\t", ";", ",", "|"):
        if sep in header:
            return sep
    raise DatasetFormatError(path, 1, "cannot tell the separator; pass sep=")


def read_event_file(
    path: str | os.PathLike,
    *,
    session_col: str = "session_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    sep: str | None = None,
    time_unit: str = "ms",
) -> Iterator[ClickEvent]:
    """Clicks from a CSV/TSV (header line; `.gz` allowed) or Parquet file, in file order.

    The header is checked before this returns; a bad row raises DatasetFormatError naming the
    file and line when the iteration reaches it. Item and session ids are kept as text.
    """
    path = Path(path)
    parse_time = _time_parser(path, time_unit)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.name.removesuffix(".gz").endswith(".parquet"):
        return _read_parquet(path, session_col, item_col, time_col, parse_time)

    opener = gzip.open if path.suffix == ".gz" else open
    f = opener(path, "rt", encoding="utf-8", newline="")
    try:
        header_line = f.readline()
        if not header_line.strip():
            raise DatasetFormatError(path, None, "empty file (no header line)")
        sep = sep or _sniff_sep(path, header_line)
        header = next(csv.reader(io.StringIO(header_line), delimiter=sep))
        header = [h.strip() for h in header]
        wanted = {"session": session_col, "item": item_col, "time": time_col}
        missing = [c for c in wanted.values() if c not in header]
        if missing:
            raise DatasetFormatError(
                path, 1, f"missing column(s) {missing}; the header has {header} (sep {sep!r})"
            )
    except BaseException:
        f.close()
        raise
    cols = {k: header.index(v) for k, v in wanted.items()}
    return _iter_csv_rows(path, f, sep, len(header), cols, parse_time)


def _iter_csv_rows(path, f, sep, n_fields, cols, parse_time) -> Iterator[ClickEvent]:
    with f:
        reader = csv.reader(f, delimiter=sep)
        for row in reader:
            line = reader.line_num + 1  # + the header line read before the reader
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != n_fields:
                raise DatasetFormatError(
                    path,
                    line,
                    f"expected {n_fields} fields, got {len(row)}: {sep.join(row)[:60]!r}",
                )
            session, item = row[cols["session"]].strip(), row[cols["item"]].strip()
            if not session or not item:
                raise DatasetFormatError(path, line, "empty session or item id")
            yield ClickEvent(session, item, parse_time(row[cols["time"]].strip(), line))


def _read_parquet(path, session_col, item_col, time_col, parse_time) -> Iterator[ClickEvent]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetFormatError(
            path, None, "reading Parquet needs pyarrow: pip install -e '.[parquet]'"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetFormatError(path, None, f"not a readable Parquet file: {exc}") from None
    missing = [c for c in (session_col, item_col, time_col) if c not in table.column_names]
    if missing:
        raise DatasetFormatError(
            path, None, f"missing column(s) {missing}; the file has {table.column_names}"
        )
    times = table.column(time_col)
    if hasattr(times.type, "unit"):  # an Arrow timestamp column: convert to epoch ms
        times = times.cast("timestamp[ms]").cast("int64")
        parse_time = _time_parser(path, "ms")
    sessions = table.column(session_col).to_pylist()
    items = table.column(item_col).to_pylist()

    def rows() -> Iterator[ClickEvent]:
        for k, (s, i, t) in enumerate(zip(sessions, items, times.to_pylist(), strict=True)):
            if s is None or i is None or t is None:
                raise DatasetFormatError(path, None, f"row {k + 1}: null session, item or time")
            yield ClickEvent(str(s), str(i), parse_time(t, None))

    return rows()
