"""Readings CSV files (``timestamp,flow_rate,pressure``): the import / replay / evaluate format.

A meter without one of the signals has a file without its column (``timestamp,flow_rate``): the
signal is then missing in every row, and not flagged (the meter does not have it).

``timestamp`` is ISO 8601; one with no offset is read in ``naive_tz`` (UTC unless told). An empty
value is a missing reading (flagged); text that is not a number, NaN, infinity or a bad timestamp
rejects the row with its line number and reason, and so does a row with more fields than the header
(the import goes on). Values outside the physical limits are kept and flagged, never silently dropped.

A row with more fields than the header, in pandas' fast C parser: with ``on_bad_lines="warn"`` the
parser skips it and says which line it was; the messages are collected per chunk in the reader's
``warning_sink`` (the collector pandas' own parallel reader uses: thread-safe, unlike catching
warnings, and the parse runs in a thread when a store parses ahead). Only the *first* data row needs
care: pandas takes its width as the table's, so a long first row would turn the first column into an
index (or, with ``index_col=False``, be cut silently); :func:`_long_leading_rows` finds such rows with
the ``csv`` module first and they are skipped and rejected the same way.

``flowwatch import`` reads a small clean file without pandas (:mod:`shared.readings_csv_rows`, which
also holds the definitions both readers share); every other file, and every bad row, is read here.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from shared.eventtime import implausible
from shared.readings_csv_rows import (  # the definitions both readers share (that module loads no pandas)
    CHUNK_ROWS,
    RAW_MAX_CHARS,
    REQUIRED,
    SIGNAL_COLUMNS,
    TIME_OFFSET,
    CsvFormatError,
    Reject,
    RowChunk,
    missing_columns,
    too_many,
)
from shared.settings import RangeLimits
from shared.store.base import reading_frame_columns

if TYPE_CHECKING:
    from shared.store.base import Store, WriteResult

__all__ = ["CHUNK_ROWS", "CsvFormatError", "ParsedChunk", "Reject", "import_chunks", "parse_chunk", "read_all", "read_chunks"]
_SKIPPED = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")


@dataclass
class ParsedChunk:
    frame: pd.DataFrame  # UTC index 'ts'; seq, flow_rate, pressure, quality, source
    rejects: list[Reject] = field(default_factory=list)
    rows: int = 0

    def write(self, store: Store, site: str, meter: str) -> WriteResult:
        return store.write_reading_frame(site, meter, self.frame)

    def columns(self) -> RowChunk:
        """The same readings as plain lists: a few milliseconds to pickle (a frame's text columns take
        longer), and the process that writes them needs no pandas."""
        return RowChunk(*reading_frame_columns(self.frame), self.rejects)


def _numbers(col: pd.Series, name: str, lines: np.ndarray, rejects: list[Reject], raw: pd.DataFrame, bad: np.ndarray) -> np.ndarray:
    """Parse a number column; empty is missing (NaN), anything else that is not finite rejects the row.
    A float column is the C parser's (NaN only from an empty field; infinities already turned back to text)."""
    if col.dtype == "float64":
        return col.to_numpy(dtype="float64", copy=True)
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan, copy=True)
    suspicious = np.flatnonzero(~np.isfinite(values))  # usually few: only these are inspected as text
    for i in suspicious:
        v = col.iloc[i]
        text = "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()  # NaN: an empty field
        if text == "":
            values[i] = np.nan
            continue
        values[i] = np.nan
        if not bad[i]:
            rejects.append(Reject(int(lines[i]), f"{name} {text!r} is not a finite number", _row_text(raw, i)))
        bad[i] = True
    return values


def _row_text(raw: pd.DataFrame, i: int) -> str:
    """Row ``i`` as a CSV line (a missing value as an empty field)."""
    return ",".join("" if isinstance(v, float) and v != v else str(v) for v in raw.iloc[i].tolist())


def _timestamps(text: pd.Series, naive_tz: str) -> tuple[pd.Series, np.ndarray]:
    """UTC timestamps (NaT where unparseable), and which rows are local wall times that do not exist
    in ``naive_tz`` (skipped when the clocks went forward). Fast path for the canonical
    2026-01-01T00:00:00Z form.

    A logger on local time writes the hour the clocks go back twice: the first pass is summer time,
    the second (the wall clock fell back to or below a time already written) winter time. Rows in file
    order, so a file sorted otherwise or cut inside that hour can misplace an hour a year."""
    ts = pd.to_datetime(text, format="%Y-%m-%dT%H:%M:%S%z", errors="coerce", utc=True)
    missing = np.zeros(len(text), dtype=bool)
    if not ts.isna().any():
        return ts, missing
    text = text.str.strip()
    ts = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    naive = ~text.str.contains(TIME_OFFSET.pattern, regex=True)
    if naive.any() and naive_tz != "UTC":
        wall = pd.to_datetime(text[naive], format="ISO8601", errors="coerce")
        seen = wall.cummax().shift(1)  # the latest wall time before each row
        summer = ~(seen >= wall).to_numpy()  # not yet back at a time already written: the first pass
        local = wall.dt.tz_localize(naive_tz, ambiguous=summer, nonexistent="NaT")
        ts[naive] = local.dt.tz_convert("UTC")
        missing[np.flatnonzero(naive.to_numpy())[(local.isna() & wall.notna()).to_numpy()]] = True
    return ts, missing


def _implausible_times(ts: pd.Series, limits: RangeLimits) -> list[tuple[int, str]]:
    """Rows whose time cannot be placed (:func:`shared.eventtime.implausible`); in a file the meter's
    previous reading is the row before (the row after, for the first row), so a simulated file that
    runs ahead of the clock passes and a lone far-future row does not."""
    now = datetime.now(UTC)
    sec = ts.dt.as_unit("us").astype("int64").to_numpy() / 1e6  # no overflow up to year 9999
    sec[ts.isna().to_numpy()] = np.nan
    out = [(int(i), f"timestamp {ts.iloc[i].isoformat()} is before limits.earliest ({limits.earliest.isoformat()})")
           for i in np.flatnonzero(sec < limits.earliest.timestamp())]  # year 0 has no Python datetime
    ahead = np.flatnonzero(sec > now.timestamp() + limits.max_ahead_s)
    if len(ahead):  # a file running ahead of the clock: only rows too far after their neighbour are judged one by one
        prev = sec[np.where(ahead > 0, ahead - 1, ahead + 1).clip(0, len(sec) - 1)]
        prev[(ahead == 0) & (len(sec) < 2)] = np.nan
        ahead = ahead[~(sec[ahead] - prev <= limits.max_jump_s)]  # NaN (no neighbour) is judged
    for i in ahead:
        j = i - 1 if i > 0 else i + 1
        last = ts.iloc[j].to_pydatetime() if 0 <= j < len(ts) and not pd.isna(ts.iloc[j]) else None
        reason = implausible(ts.iloc[i].to_pydatetime(), last=last, now=now, limits=limits)
        if reason is not None:
            out.append((int(i), reason))
    return sorted(out)


def parse_chunk(raw: pd.DataFrame, first_line: int | np.ndarray, limits: RangeLimits, naive_tz: str = "UTC", source: str = "import") -> ParsedChunk:
    """Validate one chunk of string columns. ``first_line`` is the file line of the chunk's first row
    (the rows on consecutive lines), or the line of each row."""
    n = len(raw)
    lines = np.arange(first_line, first_line + n) if np.isscalar(first_line) else np.asarray(first_line)
    rejects: list[Reject] = []
    ts, skipped = _timestamps(raw["timestamp"], naive_tz)
    bad = ts.isna().to_numpy().copy()
    for i in np.flatnonzero(bad):
        text = str(raw["timestamp"].iloc[i]).strip()
        why = (f"timestamp {text!r} does not exist in {naive_tz} (--naive-tz): the clocks went forward over it" if skipped[i]
               else f"timestamp {text!r} is not ISO 8601")
        rejects.append(Reject(int(lines[i]), why, _row_text(raw, i)))
    for i, reason in _implausible_times(ts, limits):
        bad[i] = True
        rejects.append(Reject(int(lines[i]), reason, _row_text(raw, i)))
    absent = np.full(n, np.nan)
    flow = _numbers(raw["flow_rate"], "flow_rate", lines, rejects, raw, bad) if "flow_rate" in raw else absent
    pres = _numbers(raw["pressure"], "pressure", lines, rejects, raw, bad) if "pressure" in raw else absent

    keep = ~bad
    flow, pres = flow[keep], pres[keep]
    quality = np.full(keep.sum(), "", dtype=object)

    def flag(mask: np.ndarray, name: str) -> None:
        quality[mask] = np.where(quality[mask] == "", name, quality[mask] + "," + name)

    if "flow_rate" in raw:
        flag(np.isnan(flow), "flow_rate_missing")
        flag(~np.isnan(flow) & ((flow < limits.flow_rate_min) | (flow > limits.flow_rate_max)), "flow_rate_out_of_range")
    if "pressure" in raw:
        flag(np.isnan(pres), "pressure_missing")
        flag(~np.isnan(pres) & ((pres < limits.pressure_min) | (pres > limits.pressure_max)), "pressure_out_of_range")
    frame = pd.DataFrame(
        {"seq": pd.array(lines[keep], dtype="Int64"), "flow_rate": flow, "pressure": pres, "quality": quality, "source": source},
        index=pd.DatetimeIndex(ts[keep], name="ts"),
    )
    rejects.sort(key=lambda r: r.line)
    return ParsedChunk(frame, rejects, n)


class _RawLines:
    """The text of a few lines of a file by number, read forward once (lines asked in order)."""

    def __init__(self, path: Path) -> None:
        self.path, self.f, self.at = path, None, 0  # self.at: the number of the last line read

    def get(self, number: int) -> str:
        if self.f is None or number <= self.at:
            self.close()
            self.f, self.at = self.path.open("rb"), 0
        line = b""
        while self.at < number:
            line = self.f.readline()
            self.at += 1
            if not line:
                return ""
        text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
        return text if len(text) <= RAW_MAX_CHARS else text[:RAW_MAX_CHARS] + "..."

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def _long_leading_rows(path: Path) -> tuple[list[Reject], int, list[str]]:
    """The data rows before the first one with no more fields than the header (each one rejected),
    the line of that first row, and the header. pandas takes the first data row's width as the table's: a long
    first row would shift every column (see the module docstring)."""
    rejects: list[Reject] = []
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            rows = csv.reader(f, skipinitialspace=True)
            header = next((r for r in rows if r), None)
            if header is None:
                return rejects, 2, []
            start = rows.line_num
            for row in rows:
                if not row:  # a blank line: pandas skips it too
                    start = rows.line_num
                    continue
                if len(row) <= len(header):
                    break
                rejects.append(too_many(rows.line_num, len(header), len(row), ",".join(row)[:RAW_MAX_CHARS]))
                start = rows.line_num
            return rejects, start + 1, header
    except (OSError, csv.Error):
        return [], 2, []  # pandas says what is wrong with the file


def _skipped_lines(sink: list[tuple[str, type[Warning]]], raw: _RawLines) -> list[Reject]:
    """The rows the C parser skipped for having too many fields (from its warning sink), emptied."""
    rejects = []
    for text, category in sink:
        found = list(_SKIPPED.finditer(text))
        for m in found:
            line, expected, saw = int(m[1]), int(m[2]), int(m[3])
            rejects.append(too_many(line, expected, saw, raw.get(line)))
        if not found:
            warnings.warn(text, category, stacklevel=2)
    sink.clear()
    return sorted(rejects, key=lambda r: r.line)


def _as_text(raw: pd.DataFrame, name: str, lines: np.ndarray, raw_lines: _RawLines, header: list[str]) -> pd.Series:
    """A value column parsed as floats, back as the file's text (an infinity has many spellings,
    and a rejected row names the one in the file)."""
    values = raw[name].to_numpy()
    text = np.where(np.isnan(values), "", raw[name].astype(str).to_numpy()).astype(object)
    pos = next((k for k, h in enumerate(header) if h.strip().lower() == name), None)
    for i in np.flatnonzero(np.isinf(values)):
        fields = next(csv.reader([raw_lines.get(int(lines[i]))], skipinitialspace=True), [])
        text[i] = fields[pos] if pos is not None and pos < len(fields) else str(values[i])
    return pd.Series(text, index=raw.index, dtype=object)


def _lines_of(first: int, n: int, skipped: list[Reject]) -> np.ndarray:
    """The lines of ``n`` rows read from line ``first`` on, around the skipped ones."""
    lines = np.arange(first, first + n + len(skipped))
    if skipped:
        lines = lines[~np.isin(lines, [r.line for r in skipped])]
    return lines[:n]


def read_chunks(path: Path, limits: RangeLimits, naive_tz: str = "UTC", chunk_rows: int = CHUNK_ROWS, source: str = "import") -> Iterator[ParsedChunk]:
    """Parse a readings CSV in chunks. Raises CsvFormatError if the header is wrong."""
    leading, line, header = _long_leading_rows(path)  # line: the file line of the next row pandas gives
    # The value columns are parsed by the C parser (floats; an empty field is NaN), the rest as text;
    # a value column with text in it comes as text and is judged row by row (parse_chunk).
    numeric = [h for h in header if h.strip().lower() in SIGNAL_COLUMNS]
    try:
        reader = pd.read_csv(
            path, dtype={h: str for h in header if h not in numeric} or str, keep_default_na=False,
            na_values={h: [""] for h in numeric} or None, chunksize=chunk_rows, skipinitialspace=True,
            on_bad_lines="warn", index_col=False, skiprows=[r.line - 1 for r in leading] or None,
        )
        sink: list[tuple[str, type[Warning]]] = []
        reader._engine._reader.warning_sink = sink  # see the module docstring; pandas is pinned
    except (OSError, ValueError) as exc:
        raise CsvFormatError(f"cannot read {path}: {exc}") from exc
    raw_lines = _RawLines(path)
    try:
        for raw in reader:
            raw.columns = [c.strip().lower() for c in raw.columns]
            if "timestamp" not in raw.columns or not any(c in raw.columns for c in SIGNAL_COLUMNS):
                raise missing_columns(path, raw.columns)
            skipped = _skipped_lines(sink, raw_lines)  # among this chunk's rows (or just after them)
            lines = _lines_of(line, len(raw), skipped)
            raw = raw[[c for c in REQUIRED if c in raw.columns]].copy()
            for name in SIGNAL_COLUMNS:
                if name in raw and raw[name].dtype == "float64" and np.isinf(raw[name].to_numpy()).any():  # rare: the text says why
                    raw[name] = _as_text(raw, name, lines, raw_lines, header)
            chunk = parse_chunk(raw, lines, limits, naive_tz, source)
            chunk.rejects = sorted(chunk.rejects + leading + skipped, key=lambda r: r.line)
            chunk.rows += len(leading) + len(skipped)
            line += len(raw) + len(skipped)
            leading = []
            yield chunk
        skipped = leading + _skipped_lines(sink, raw_lines)  # long rows after the last row read
        if skipped:
            empty = pd.DataFrame({c: pd.Series([], dtype=str) for c in REQUIRED})
            yield ParsedChunk(parse_chunk(empty, line, limits, naive_tz, source).frame, skipped, len(skipped))
    except pd.errors.ParserError as exc:
        raise CsvFormatError(f"{path}: {exc}") from exc
    except pd.errors.EmptyDataError:
        raise CsvFormatError(f"{path} is empty; expected a header timestamp,flow_rate,pressure") from None
    finally:
        raw_lines.close()


def import_chunks(path: Path, limits: RangeLimits, naive_tz: str = "UTC", *, parse_ahead: bool = False) -> Iterator[ParsedChunk]:
    """The chunks of an import into a store: parsed ahead in a thread when the store says it gains
    from it (``Store.parse_ahead``), in turn otherwise."""
    chunks = read_chunks(path, limits, naive_tz)
    return prefetch(chunks) if parse_ahead else chunks


def read_all(path: Path, limits: RangeLimits | None = None, naive_tz: str = "UTC", source: str = "replay") -> tuple[pd.DataFrame, list[Reject]]:
    """The whole file as one frame (sorted by time, later duplicates win) and its rejects."""
    frames, rejects = [], []
    for c in read_chunks(path, limits or RangeLimits(), naive_tz, source=source):
        frames.append(c.frame)
        rejects.extend(c.rejects)
    if not frames:
        return pd.DataFrame(columns=["seq", "flow_rate", "pressure", "quality", "source"]), rejects
    df = pd.concat(frames)
    df = df[~df.index.duplicated(keep="last")].sort_index()
    return df, rejects


def prefetch(chunks: Iterator[ParsedChunk], depth: int = 2) -> Iterator[ParsedChunk]:
    """Parse the next chunks in a background thread while the caller writes the current one."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for c in chunks:
                if stop.is_set():
                    return
                q.put(c)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
        q.put(done)

    t = threading.Thread(target=produce, name="csv-parse", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)
