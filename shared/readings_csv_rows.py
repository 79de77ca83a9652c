"""Small, clean readings files read row by row with the standard library: ``flowwatch import``'s fast path.

Loading pandas takes about a quarter of a second, longer than reading a two-year file of hourly or
15-minute readings row by row. So ``flowwatch import`` reads files of up to :data:`SMALL_FILE_BYTES`
in all with this reader, and pandas' (:mod:`shared.readings_csv`, the format's rules) reads the
rest. This reader takes only *clean* files: a header with ``timestamp`` and the signal columns, then
rows of exactly that width, each with a timestamp of the form ``2026-03-01T00:00:00Z`` (``T`` or a
space; ``Z``, ``+09:00`` or no offset; fractional seconds only as zeros), plain decimal numbers or
empty fields, and a plausible time. On the first thing that is not (a bad or odd timestamp, text,
NaN or infinity in a value column, a blank line, a short or long row, bytes that are not UTF-8, a
time before ``limits.earliest`` or ahead of the clock) it gives up with :class:`NotPlain` before
anything is written, and pandas' reader reads the file and says what is wrong with each bad row.
So the rules for bad rows exist once, and both readers give the same readings for every file this
one takes (tests/test_import.py checks it on generated files).

The definitions both readers share live here, so that this module imports neither pandas nor numpy.
"""

from __future__ import annotations

import csv
import io
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from shared.eventtime import implausible
from shared.messages import SIGNALS

if TYPE_CHECKING:
    from shared.settings import RangeLimits
    from shared.store.base import Store, WriteResult

REQUIRED = ("timestamp", "flow_rate", "pressure")  # timestamp and at least one signal column
SIGNAL_COLUMNS = SIGNALS  # the value columns a readings file may have
CHUNK_ROWS = 100_000  # rows per parsed chunk (one store transaction each)
RAW_MAX_CHARS = 1000  # a rejected line is quoted in the rejects file up to this length
#: ``flowwatch import`` reads files of up to this many bytes in all (one process) with this reader,
#: larger ones with pandas': at about 3 µs a row here against pandas' 0.25 s start and ~1.5 µs a
#: row, the two cross near 150,000 rows (~5 MB); docs/benchmarks.md (Import) has the figures.
SMALL_FILE_BYTES = 4 << 20

_TIME = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.0{1,9})?(?:Z|[+-]\d\d:\d\d)?"
_TIMES = re.compile(f"{_TIME}(?:\n{_TIME})*", re.ASCII)  # a whole column, its fields joined by newlines
#: The characters of a plain decimal number (and the newlines joining a column's fields): with only
#: these, ``float`` takes what pandas' parser takes ([sign] digits [. digits] [e [sign] digits]) and
#: fails on the rest (``1.2.3``, ``1e``): no ``nan``, ``inf``, ``1_000``, spaces or other digits.
_NUMBER_CHARS = frozenset("0123456789.+-eE\n")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TZINFO = operator.attrgetter("tzinfo")
_SECOND = timedelta(seconds=1)


@dataclass
class Reject:
    line: int
    reason: str
    raw: str


class CsvFormatError(ValueError):
    pass


class NotPlain(Exception):  # noqa: N818 - not an error: the file is for pandas' reader
    """The file is not one this reader takes; pandas' reader reads it (and says what is wrong)."""


def too_many(line: int, expected: int, saw: int, raw: str) -> Reject:
    return Reject(line, f"{saw} fields where the header has {expected} (a ',' too many?)", raw)


def missing_columns(path: Path, columns: Sequence[str]) -> CsvFormatError:
    missing = [c for c in REQUIRED if c not in columns]
    return CsvFormatError(f"{path}: missing column(s) {', '.join(missing)}; the header must be timestamp,flow_rate,pressure "
                          "(or timestamp and one of flow_rate, pressure for a meter with one signal)")


TIME_OFFSET = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")  # how a timestamp with a UTC offset ends (both readers)


def naive_timestamps(path: Path, rows: int = 20) -> bool:
    """Whether the first ``rows`` timestamps of a readings file carry no UTC offset (they are then
    read in ``--naive-tz``, UTC unless told: a logger's local wall time read as UTC moves every night
    window and hour of day by the zone's offset). False for a file that cannot be read: the reader
    says why."""
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if "timestamp" not in header:
                return False
            at = header.index("timestamp")
            stamps = [r[at].strip() for r, _ in zip(reader, range(rows), strict=False) if len(r) > at and r[at].strip()]
    except OSError:
        return False
    return any(not TIME_OFFSET.search(t) for t in stamps)


@dataclass
class RowChunk:
    """Readings as plain lists (epoch seconds; NaN where a value is missing): what this reader gives,
    and what a chunk of pandas' reader becomes to cross to another process (``ParsedChunk.columns``)."""

    ts: list[int]
    seq: list[int]  # the file line of each reading
    flow_rate: list[float]
    pressure: list[float]
    quality: list[str]
    source: str | list[str]  # one for every row, or one per row
    rejects: list[Reject] = field(default_factory=list)  # always empty from this reader: a file with a bad row is pandas'

    @property
    def rows(self) -> int:
        """Rows read: each is a reading or has one reject."""
        return len(self.ts) + len(self.rejects)

    def write(self, store: Store, site: str, meter: str) -> WriteResult:
        return store.write_reading_columns(site, meter, self.ts, self.seq, self.flow_rate, self.pressure, self.quality, self.source)


def read_rows(path: Path, limits: RangeLimits, naive_tz: str = "UTC", chunk_rows: int = CHUNK_ROWS,
              source: str = "import") -> list[RowChunk]:
    """Every reading of a clean file, in chunks; raises :class:`NotPlain` for any other file (before
    anything is returned: the caller reads it with pandas' reader instead)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            text = f.read(SMALL_FILE_BYTES + 1)  # at most: a file that grew since it was judged small is pandas'
        if len(text) > SMALL_FILE_BYTES:
            raise NotPlain("larger than SMALL_FILE_BYTES")
        reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
        table = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NotPlain(str(exc)) from None
    if reader.line_num != len(table):  # a quoted field across lines: the rows' line numbers are not theirs
        raise NotPlain("a field spans lines")
    if not table or not table[0]:
        raise NotPlain("no header on the first line")
    names = [h.strip().lower() for h in table[0]]
    width = len(names)
    cols = [(c, names.index(c)) for c in REQUIRED if c in names]
    if len(set(names)) < width or "timestamp" not in names or len(cols) < 2:
        raise NotPlain("header")  # pandas' reader says what is wrong with it
    rows = table[1:]
    if any(len(r) != width for r in rows):
        raise NotPlain("a short or long row, or a blank line")
    columns = {i: [r[i] for r in rows] for _, i in cols}  # column-wise: each check below is one pass in C over a column
    at = cols[0][1]  # timestamp: REQUIRED's first
    if rows and not _TIMES.fullmatch("\n".join(columns[at])):
        raise NotPlain("timestamp")
    ts = _epochs(columns[at], None if naive_tz == "UTC" else ZoneInfo(naive_tz))
    _check_times(ts, limits)
    n = len(ts)
    values = {c: [math.nan] * n for c in SIGNAL_COLUMNS}
    present = [c for c, _ in cols[1:]]
    gaps: set[str] = set()  # the columns with a missing value
    for c, i in cols[1:]:
        fields = columns[i]
        if not set("\n".join(fields)) <= _NUMBER_CHARS:
            raise NotPlain(c)
        if "" in fields:
            gaps.add(c)
        try:
            col = [float(x) if x else math.nan for x in fields] if c in gaps else list(map(float, fields))
        except ValueError:
            raise NotPlain(c) from None
        if math.inf in col or -math.inf in col:  # 1e999
            raise NotPlain(c)
        values[c] = col
    quality = _flags(values, limits, present, gaps)
    lines = range(2, n + 2)
    return [RowChunk(ts[i:i + chunk_rows], list(lines[i:i + chunk_rows]), values["flow_rate"][i:i + chunk_rows],
                     values["pressure"][i:i + chunk_rows], quality[i:i + chunk_rows], source)
            for i in range(0, n, chunk_rows)]


def _epochs(texts: Sequence[str], zone: ZoneInfo | None) -> list[int]:
    """Epoch seconds of timestamps that matched ``_TIME`` (one with no offset is in ``zone``, UTC when None)."""
    try:
        times = list(map(datetime.fromisoformat, texts))
    except ValueError:  # 2026-02-30, 25:00, ...
        raise NotPlain("timestamp") from None
    if None not in map(_TZINFO, times):  # every one with its offset: the usual file, in C
        return list(map(int, map(datetime.timestamp, times)))  # whole seconds (_TIME): exact as floats
    return [(t - _EPOCH) // _SECOND if t.tzinfo is not None else _naive(t, zone) for t in times]


def _naive(t: datetime, zone: ZoneInfo | None) -> int:
    if zone is None:
        return (t.replace(tzinfo=UTC) - _EPOCH) // _SECOND
    t = t.replace(tzinfo=zone)
    if t.utcoffset() != t.replace(fold=1).utcoffset():  # a local time that occurs twice or never
        raise NotPlain("timestamp")
    return (t - _EPOCH) // _SECOND


def _check_times(ts: list[int], limits: RangeLimits) -> None:
    """Raise NotPlain where :func:`shared.eventtime.implausible` would reject a row (its neighbour row
    standing for the meter's previous reading, as in pandas' reader)."""
    earliest = limits.earliest.timestamp()
    now = datetime.now(UTC)
    ahead = now.timestamp() + limits.max_ahead_s
    if not ts or (min(ts) >= earliest and max(ts) <= ahead):  # the usual file: nothing to judge row by row
        return
    for i, t in enumerate(ts):
        if t < earliest:
            raise NotPlain("before limits.earliest")
        if t > ahead:
            j = i - 1 if i > 0 else i + 1
            last = datetime.fromtimestamp(ts[j], UTC) if j < len(ts) else None
            if implausible(datetime.fromtimestamp(t, UTC), last=last, now=now, limits=limits) is not None:
                raise NotPlain("ahead of the clock")


def _flags(values: dict[str, list[float]], limits: RangeLimits, present: list[str], gaps: set[str]) -> list[str]:
    """Each row's quality flags, as pandas' reader sets them: missing, then out of range, per signal
    (``gaps``: the columns with a missing value)."""
    n = len(values["flow_rate"])
    out = [""] * n
    for c in SIGNAL_COLUMNS:
        if c not in present:
            continue
        lo, hi = getattr(limits, f"{c}_min"), getattr(limits, f"{c}_max")
        col = values[c]
        if c not in gaps and (not col or (min(col) >= lo and max(col) <= hi)):  # the usual column: nothing to flag
            continue
        for i, v in enumerate(col):
            flag = f"{c}_missing" if v != v else (f"{c}_out_of_range" if v < lo or v > hi else "")
            if flag:
                out[i] = flag if not out[i] else out[i] + "," + flag
    return out


def small_enough(paths: Sequence[Path]) -> bool:
    """Whether files this size in all are read with this reader (pandas is then not loaded at all)."""
    try:
        return sum(p.stat().st_size for p in paths) <= SMALL_FILE_BYTES
    except OSError:
        return False
