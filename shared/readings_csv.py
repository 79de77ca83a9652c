"""Readings CSV files (``timestamp,flow_rate,pressure``): the import / replay / evaluate format.

``timestamp`` is ISO 8601; one with no offset is read in ``naive_tz`` (UTC unless told). An empty
value is a missing reading (flagged); text that is not a number, NaN, infinity or a bad timestamp
rejects the row with its line number and reason. Values outside the physical limits are kept and
flagged, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from shared.eventtime import implausible
from shared.settings import RangeLimits

REQUIRED = ("timestamp", "flow_rate", "pressure")
CHUNK_ROWS = 100_000


@dataclass
class Reject:
    line: int
    reason: str
    raw: str


@dataclass
class ParsedChunk:
    frame: pd.DataFrame  # UTC index 'ts'; seq, flow_rate, pressure, quality, source
    rejects: list[Reject] = field(default_factory=list)
    rows: int = 0


class CsvFormatError(ValueError):
    pass


def _numbers(col: pd.Series, name: str, lines: np.ndarray, rejects: list[Reject], raw: pd.DataFrame, bad: np.ndarray) -> np.ndarray:
    """Parse a number column; empty is missing (NaN), anything else that is not finite rejects the row."""
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan, copy=True)
    suspicious = np.flatnonzero(~np.isfinite(values))  # usually few: only these are inspected as text
    for i in suspicious:
        text = str(col.iloc[i]).strip()
        if text == "":
            values[i] = np.nan
            continue
        values[i] = np.nan
        if not bad[i]:
            rejects.append(Reject(int(lines[i]), f"{name} {text!r} is not a finite number", ",".join(map(str, raw.iloc[i].tolist()))))
        bad[i] = True
    return values


def _timestamps(text: pd.Series, naive_tz: str) -> pd.Series:
    """UTC timestamps (NaT where unparseable). Fast path for the canonical 2026-01-01T00:00:00Z form."""
    ts = pd.to_datetime(text, format="%Y-%m-%dT%H:%M:%S%z", errors="coerce", utc=True)
    if not ts.isna().any():
        return ts
    text = text.str.strip()
    ts = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    naive = ~text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
    if naive.any() and naive_tz != "UTC":
        local = pd.to_datetime(text[naive], format="ISO8601", errors="coerce").dt.tz_localize(naive_tz, ambiguous="NaT", nonexistent="NaT")
        ts[naive] = local.dt.tz_convert("UTC")
    return ts


def _implausible_times(ts: pd.Series, limits: RangeLimits) -> list[tuple[int, str]]:
    """Rows whose time cannot be placed (:func:`shared.eventtime.implausible`); in a file the meter's
    previous reading is the row before (the row after, for the first row), so a simulated file that
    runs ahead of the clock passes and a lone far-future row does not."""
    now = datetime.now(UTC)
    sec = ts.dt.as_unit("us").astype("int64").to_numpy() / 1e6  # no overflow up to year 9999
    sec[ts.isna().to_numpy()] = np.nan
    out = [(int(i), f"timestamp {ts.iloc[i].isoformat()} is before limits.earliest ({limits.earliest.isoformat()})")
           for i in np.flatnonzero(sec < limits.earliest.timestamp())]  # year 0 has no Python datetime
    for i in np.flatnonzero(sec > now.timestamp() + limits.max_ahead_s):
        j = i - 1 if i > 0 else i + 1
        last = ts.iloc[j].to_pydatetime() if 0 <= j < len(ts) and not pd.isna(ts.iloc[j]) else None
        reason = implausible(ts.iloc[i].to_pydatetime(), last=last, now=now, limits=limits)
        if reason is not None:
            out.append((int(i), reason))
    return sorted(out)


def parse_chunk(raw: pd.DataFrame, first_line: int, limits: RangeLimits, naive_tz: str = "UTC", source: str = "import") -> ParsedChunk:
    """Validate one chunk of string columns. ``first_line`` is the file line of the chunk's first row."""
    n = len(raw)
    lines = np.arange(first_line, first_line + n)
    rejects: list[Reject] = []
    ts = _timestamps(raw["timestamp"], naive_tz)
    bad = ts.isna().to_numpy().copy()
    for i in np.flatnonzero(bad):
        rejects.append(Reject(int(lines[i]), f"timestamp {str(raw['timestamp'].iloc[i]).strip()!r} is not ISO 8601", ",".join(map(str, raw.iloc[i].tolist()))))
    for i, reason in _implausible_times(ts, limits):
        bad[i] = True
        rejects.append(Reject(int(lines[i]), reason, ",".join(map(str, raw.iloc[i].tolist()))))
    flow = _numbers(raw["flow_rate"], "flow_rate", lines, rejects, raw, bad)
    pres = _numbers(raw["pressure"], "pressure", lines, rejects, raw, bad)

    keep = ~bad
    flow, pres = flow[keep], pres[keep]
    quality = np.full(keep.sum(), "", dtype=object)

    def flag(mask: np.ndarray, name: str) -> None:
        quality[mask] = np.where(quality[mask] == "", name, quality[mask] + "," + name)

    flag(np.isnan(flow), "flow_rate_missing")
    flag(~np.isnan(flow) & ((flow < limits.flow_rate_min) | (flow > limits.flow_rate_max)), "flow_rate_out_of_range")
    flag(np.isnan(pres), "pressure_missing")
    flag(~np.isnan(pres) & ((pres < limits.pressure_min) | (pres > limits.pressure_max)), "pressure_out_of_range")
    frame = pd.DataFrame(
        {"seq": pd.array(lines[keep], dtype="Int64"), "flow_rate": flow, "pressure": pres, "quality": quality, "source": source},
        index=pd.DatetimeIndex(ts[keep], name="ts"),
    )
    rejects.sort(key=lambda r: r.line)
    return ParsedChunk(frame, rejects, n)


def read_chunks(path: Path, limits: RangeLimits, naive_tz: str = "UTC", chunk_rows: int = CHUNK_ROWS, source: str = "import") -> Iterator[ParsedChunk]:
    """Parse a readings CSV in chunks. Raises CsvFormatError if the header is wrong."""
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=chunk_rows, skipinitialspace=True, on_bad_lines="error")
    except (OSError, ValueError) as exc:
        raise CsvFormatError(f"cannot read {path}: {exc}") from exc
    line = 2  # the header is line 1
    try:
        for raw in reader:
            raw.columns = [c.strip().lower() for c in raw.columns]
            missing = [c for c in REQUIRED if c not in raw.columns]
            if missing:
                raise CsvFormatError(f"{path}: missing column(s) {', '.join(missing)}; the header must be timestamp,flow_rate,pressure")
            chunk = parse_chunk(raw[list(REQUIRED)], line, limits, naive_tz, source)
            line += len(raw)
            yield chunk
    except pd.errors.ParserError as exc:
        raise CsvFormatError(f"{path}: {exc}") from exc
    except pd.errors.EmptyDataError:
        raise CsvFormatError(f"{path} is empty; expected a header timestamp,flow_rate,pressure") from None


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
