"""The daily archive: the previous local day's readings, anomalies and forecasts, one CSV per kind.

Layout (``exporter.archive_dir``, relative to ``data_dir``)::

    archive/2026/03/01/readings.csv
    archive/2026/03/01/anomalies.csv
    archive/2026/03/01/forecasts.csv
    archive/2026/03/01/manifest.json     written last: the day is complete

Every file holds all meters (``site`` and ``meter`` columns), is UTF-8 with LF line endings and a
header row, and is written atomically. Times are local ISO 8601 with the UTC offset; a missing
value is an empty field. A day ``D`` is archived once event time reaches ``D+1 00:00`` local plus
``exporter.archive_lag_minutes`` (so the detector and forecaster have stored its last minutes);
``manifest.json`` makes it happen once per day, also across redeliveries and restarts.

A day missed (an outage, a restart, an import of history) is archived later: every day from the one
after the newest manifest (none: the day of the oldest reading in the store) up to the due day, at
most ``exporter.archive_catchup_days`` per reading so one reading never waits long; the rest follow
on the next readings. Days older than ``exporter.archive_days`` are not written (they would be
removed at once). Readings and
forecasts belong to the day of their time (forecasts: their target time), anomalies to the day of
their start, with the state known when the day is archived. Day folders older than
``exporter.archive_days`` are removed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import shutil
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from services.exporter.writer import atomic_write
from shared.messages import Anomaly, Reading
from shared.store import Store, StoreError

logger = logging.getLogger(__name__)

KINDS = ("readings", "anomalies", "forecasts")
MANIFEST = "manifest.json"
READING_HEADER = ("site", "meter", "time", "flow_rate_m3h", "pressure_bar", "seq", "quality", "source")
ANOMALY_HEADER = ("site", "meter", "kind", "signal", "severity", "state", "start", "end", "ts", "value", "threshold", "message")
FORECAST_HEADER = ("site", "meter", "signal", "issued_at", "target_time", "value", "model")
RETRY_AFTER = timedelta(minutes=10)


# --- pure: records -> CSV bytes (no pandas: the exporter stays small in memory) --------------------
def _num(x: float | None) -> str:
    return repr(float(x)) if x is not None and math.isfinite(x) else ""


def _time(x: datetime | None, tz: ZoneInfo) -> str:
    return "" if x is None else x.astimezone(tz).replace(microsecond=0).isoformat()


def _csv(header: Sequence[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def readings_csv(groups: Sequence[tuple[str, str, list[Reading]]], tz: ZoneInfo) -> tuple[bytes, int]:
    rows = [
        [site, meter, _time(r.ts, tz), _num(r.flow_rate), _num(r.pressure), str(r.seq), ",".join(r.quality), r.source or ""]
        for site, meter, records in groups
        for r in records
    ]
    return _csv(READING_HEADER, rows), len(rows)


def anomalies_csv(groups: Sequence[tuple[str, str, list[Anomaly]]], tz: ZoneInfo) -> tuple[bytes, int]:
    rows = [
        [site, meter, a.kind, a.signal, a.severity, a.state, _time(a.start, tz), _time(a.end, tz), _time(a.ts, tz),
         _num(a.value), _num(a.threshold), a.message or ""]
        for site, meter, records in groups
        for a in records
    ]
    return _csv(ANOMALY_HEADER, rows), len(rows)


def forecasts_csv(groups: Sequence[tuple[str, str, list[tuple]]], tz: ZoneInfo) -> tuple[bytes, int]:
    rows = [
        [site, meter, signal, _time(issued, tz), _time(target, tz), _num(value), model]
        for site, meter, points in groups
        for signal, issued, target, value, model in points
    ]
    return _csv(FORECAST_HEADER, rows), len(rows)


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[00:00, next 00:00) of a local day, as aware datetimes (DST-safe: wall-clock midnights)."""
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start, end


def day_folder(root: Path, day: date) -> Path:
    return root / f"{day.year:04d}" / f"{day.month:02d}" / f"{day.day:02d}"


def day_due(ts: datetime, tz: ZoneInfo, lag: timedelta) -> date:
    """The latest day whose archive is due at event time ``ts``."""
    return (ts - lag).astimezone(tz).date() - timedelta(days=1)


# --- I/O -----------------------------------------------------------------------------------------
class Archiver:
    """Writes each day's archive once, from the store, when event time has passed the day."""

    def __init__(self, store: Store, root: Path, tz: ZoneInfo, keep_days: int, lag: timedelta, counters=None,
                 catchup_days: int = 7) -> None:
        self.store = store
        self.root = root
        self.tz = tz
        self.keep_days = keep_days
        self.lag = lag
        self.counters = counters
        self.catchup_days = catchup_days
        self._done_through: date | None = None  # every day up to this one is archived (or had nothing)
        self._retry_at: datetime | None = None

    def _inc(self, name: str) -> None:
        if self.counters is not None:
            self.counters.inc(name)

    def on_event_time(self, ts: datetime) -> bool:
        """Archive the days due at ``ts`` not done yet (at most ``catchup_days``). Returns whether files were written."""
        due = day_due(ts, self.tz, self.lag)
        if self._done_through is not None and due <= self._done_through:
            return False
        if self._retry_at is not None and ts < self._retry_at:
            return False
        written, day = False, None
        try:
            if self._done_through is None:
                self._done_through = self._resume_after(due)
            last = min(due, self._done_through + timedelta(days=self.catchup_days))
            if last - self._done_through > timedelta(days=1):
                logger.info("archiving missed days %s .. %s (due: %s; at most %d per reading)",
                            self._done_through + timedelta(days=1), last, due, self.catchup_days)
            while self._done_through < last:
                day = self._done_through + timedelta(days=1)
                written = self.archive_day(day) or written
                self._done_through = day
        except (StoreError, OSError) as exc:
            self._inc("archive_errors")
            self._retry_at = ts + RETRY_AFTER
            logger.error(
                "daily archive of %s failed: %s; retrying after event time %s (check the store and exporter.archive_dir)",
                day or due, exc, self._retry_at.isoformat(),
            )
            return written
        self._retry_at = None
        return written

    def _resume_after(self, due: date) -> date:
        """The day after which archiving starts: the newest archived day, else the day before the store's
        oldest reading; never before the oldest day ``keep_days`` keeps."""
        floor_day = due - timedelta(days=self.keep_days)
        newest = self.newest_archived()
        if newest is not None:
            return max(newest, floor_day)
        first = self.store.first_reading_time()
        if first is None:
            return due  # nothing stored: nothing to catch up
        return max(first.astimezone(self.tz).date() - timedelta(days=1), floor_day)

    def newest_archived(self) -> date | None:
        """The newest day folder with a manifest."""
        for y in reversed(_numbered(self.root, 4)):
            for m in reversed(_numbered(y, 2)):
                for d in reversed(_numbered(m, 2)):
                    if (d / MANIFEST).exists():
                        try:
                            return date(int(y.name), int(m.name), int(d.name))
                        except ValueError:
                            continue
        return None

    def archive_day(self, day: date) -> bool:
        """Write the archive of ``day`` if it is not there yet and the store holds anything for it."""
        folder = day_folder(self.root, day)
        if (folder / MANIFEST).exists():
            logger.debug("archive of %s already complete", day)
            return False
        start, end = day_bounds(day, self.tz)
        meters = self.store.meters()
        r = [(s, m, self.store.read_reading_records(s, m, start, end)) for s, m in meters]
        a = [(s, m, self.store.read_anomaly_records(s, m, start, end)) for s, m in meters]
        f = [(s, m, self.store.read_forecast_points(s, m, start, end)) for s, m in meters]
        if not any(len(items) for _, _, items in r + a + f):
            logger.info("nothing stored for %s; no archive written", day)
            return False
        counts: dict[str, int] = {}
        for kind, (data, n) in zip(KINDS, (readings_csv(r, self.tz), anomalies_csv(a, self.tz), forecasts_csv(f, self.tz)), strict=True):
            atomic_write(folder / f"{kind}.csv", data)
            counts[kind] = n
        manifest = {"day": day.isoformat(), "timezone": str(self.tz), "rows": counts, "meters": [f"{s}/{m}" for s, m in meters]}
        atomic_write(folder / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        self._inc("archives_written")
        logger.info("archived %s: %s", day, ", ".join(f"{k} {v}" for k, v in counts.items()))
        self.remove_old(day)
        return True

    def remove_old(self, today: date) -> list[date]:
        """Remove day folders more than ``keep_days`` before ``today``, then empty month / year folders."""
        removed = []
        oldest_kept = today - timedelta(days=self.keep_days - 1)
        for y in _numbered(self.root, 4):
            for m in _numbered(y, 2):
                for d in _numbered(m, 2):
                    try:
                        when = date(int(y.name), int(m.name), int(d.name))
                    except ValueError:
                        continue
                    if when < oldest_kept:
                        shutil.rmtree(d)
                        removed.append(when)
                if not any(m.iterdir()):
                    m.rmdir()
            if not any(y.iterdir()):
                y.rmdir()
        if removed:
            self._inc("archives_removed")
            logger.info("removed %d archive day(s) older than %s (exporter.archive_days=%d)", len(removed), oldest_kept, self.keep_days)
        return removed


def _numbered(folder: Path, width: int) -> list[Path]:
    if not folder.is_dir():
        return []
    pat = re.compile(rf"^\d{{{width}}}$")
    return sorted(p for p in folder.iterdir() if p.is_dir() and pat.match(p.name))
