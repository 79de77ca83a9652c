"""SQLite adapter: the embedded default (no server to run, as seed 000 chose).

WAL journal (readers never block the writer), ``synchronous=NORMAL`` (a committed write survives a
crash or kill -9 of any process; choose ``FULL`` for power-loss durability), ``busy_timeout``, and
upserts on each record's identity, except readings: ``INSERT OR IGNORE``, and only when some rows
were ignored (``rowcount`` short of the batch) are the batch's keys read back, in the same
transaction, to tell identical redeliveries from conflicts (kept in ``reading_conflicts``), so a
fresh import pays nothing for it. ``purge`` deletes in batches of ``purge_batch`` rows per
transaction, so another writer never waits long for the lock. A writer that finds the database locked by someone else (a DB
browser left open with an uncommitted edit, seed 001's "database is locked") waits and retries for
``store.sqlite.lock_retry_s`` seconds instead of crashing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import pandas as pd


from shared.fileio import restrict_db_file
from shared.messages import AlertAction, Anomaly, Forecast, Reading, Thresholds
from shared.settings import SqliteSettings
from shared.store.base import (
    NightFlow,
    ReadingConflict,
    Store,
    StoreError,
    StoreUnavailable,
    WriteResult,
    anomaly_row,
    conflict_variant,
    epoch,
    extra_frame,
    forecast_rows,
    from_epoch,
    reading_frame_columns,
    reading_rows,
    reading_values,
    thresholds_from_payload,
    thresholds_payload,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meters (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, meter TEXT NOT NULL, UNIQUE (site, meter)
);
-- readings are the bulk of the data: keyed by a small meter id instead of two strings per row
CREATE TABLE IF NOT EXISTS readings (
    mid INTEGER NOT NULL REFERENCES meters (id), ts INTEGER NOT NULL,
    seq INTEGER, flow_rate REAL, pressure REAL, quality TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (mid, ts)
) WITHOUT ROWID;
-- a reading's extra values (Reading.extra: totalizer, battery, temperature, status...), one row per name
CREATE TABLE IF NOT EXISTS readings_extra (
    mid INTEGER NOT NULL REFERENCES meters (id), ts INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (mid, ts, name)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS readings_v AS
    SELECT m.site, m.meter, r.ts, r.seq, r.flow_rate, r.pressure, r.quality, r.source
    FROM readings r JOIN meters m ON m.id = r.mid;
CREATE TABLE IF NOT EXISTS anomalies (
    site TEXT NOT NULL, meter TEXT NOT NULL, kind TEXT NOT NULL, signal TEXT NOT NULL, start INTEGER NOT NULL,
    severity TEXT NOT NULL, state TEXT NOT NULL, "end" INTEGER, ts INTEGER NOT NULL,
    value REAL, threshold REAL, message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (site, meter, kind, signal, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forecasts (
    site TEXT NOT NULL, meter TEXT NOT NULL, signal TEXT NOT NULL, issued_at INTEGER NOT NULL,
    target_time INTEGER NOT NULL, value REAL NOT NULL, model TEXT NOT NULL,
    PRIMARY KEY (site, meter, signal, issued_at, target_time)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS forecasts_target ON forecasts (site, meter, target_time);
CREATE TABLE IF NOT EXISTS thresholds (
    site TEXT NOT NULL, meter TEXT NOT NULL, signal TEXT NOT NULL, computed_at INTEGER NOT NULL,
    method TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (site, meter, signal, computed_at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS night_flow (
    site TEXT NOT NULL, meter TEXT NOT NULL, day TEXT NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, day_mean REAL,
    PRIMARY KEY (site, meter, day)
) WITHOUT ROWID;
-- readings that arrived for a stored (meter, ts) with other values: the stored one was kept.
-- One row per distinct newcomer (variant = a hash of its values); seen_at is the wall clock.
CREATE TABLE IF NOT EXISTS reading_conflicts (
    site TEXT NOT NULL, meter TEXT NOT NULL, ts INTEGER NOT NULL, variant TEXT NOT NULL,
    flow_rate REAL, pressure REAL, quality TEXT NOT NULL, seq INTEGER, source TEXT NOT NULL,
    stored_flow_rate REAL, stored_pressure REAL, stored_quality TEXT NOT NULL, seen_at INTEGER NOT NULL,
    PRIMARY KEY (site, meter, ts, variant)
) WITHOUT ROWID;
-- acknowledgements and silences (shared.messages.AlertAction), and the services' online state
CREATE TABLE IF NOT EXISTS alert_actions (
    id TEXT PRIMARY KEY, action TEXT NOT NULL, ts INTEGER NOT NULL, payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_actions_ts ON alert_actions (ts);
CREATE TABLE IF NOT EXISTS service_status (
    service TEXT NOT NULL, ts INTEGER NOT NULL, online INTEGER NOT NULL, PRIMARY KEY (service, ts)
) WITHOUT ROWID;
"""

_INSERT_READING = (
    "INSERT OR IGNORE INTO readings (mid, ts, seq, flow_rate, pressure, quality, source) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EXTRA = "INSERT OR IGNORE INTO readings_extra (mid, ts, name, value) VALUES (?, ?, ?, ?)"
_INSERT_CONFLICT = (
    "INSERT OR REPLACE INTO reading_conflicts (site, meter, ts, variant, flow_rate, pressure, quality, seq, source, "
    "stored_flow_rate, stored_pressure, stored_quality, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Keys of a batch at most this many seconds apart on average are read back with one range scan,
#: sparser ones by key (a range over a year for two readings would read the whole year).
_DENSE_S = 600
_IN_CHUNK = 500


def _sql_text(value: object) -> str:
    """A string as an SQL literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteStore(Store):
    name = "sqlite"
    #: Rows deleted per transaction by :meth:`purge`.
    purge_batch = 10_000

    def __init__(self, path: Path | str, settings: SqliteSettings | None = None, *, synchronous: str = "NORMAL") -> None:
        self.settings = settings or SqliteSettings()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            restrict_db_file(self.path)  # 0660 less the umask, -wal and -shm alike: nothing for others
            self._db = sqlite3.connect(
                self.path, timeout=self.settings.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc} (check store.sqlite.path and data_dir)") from exc
        self._retry(lambda: self._db.execute("PRAGMA journal_mode=WAL"), "enable WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(f"PRAGMA busy_timeout={int(self.settings.busy_timeout_ms)}")
        self._retry(lambda: self._db.executescript(SCHEMA), "create schema")
        self._retry(self._migrate, "upgrade schema")
        self._mids: dict[tuple[str, str], int] = {}

    def _migrate(self) -> None:
        """Columns added since a database was created (``CREATE TABLE IF NOT EXISTS`` keeps an old table as it was)."""
        if "day_mean" not in {r[1] for r in self._db.execute("PRAGMA table_info(night_flow)")}:
            self._db.execute("ALTER TABLE night_flow ADD COLUMN day_mean REAL")

    def _mid(self, site: str, meter: str, create: bool = True) -> int | None:
        """The small integer id of (site, meter); created on first write."""
        key = (site, meter)
        if key in self._mids:
            return self._mids[key]
        rows = self._query("SELECT id FROM meters WHERE site = ? AND meter = ?", key)
        if not rows:
            if not create:
                return None
            self._write("INSERT OR IGNORE INTO meters (site, meter) VALUES (?, ?)", [key], "register meter")
            rows = self._query("SELECT id FROM meters WHERE site = ? AND meter = ?", key)
        self._mids[key] = rows[0][0]
        return rows[0][0]

    # --- plumbing -----------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn``; while the database is locked by someone else, wait and retry."""
        deadline = time.monotonic() + self.settings.lock_retry_s
        delay, warned = 0.05, False
        while True:
            try:
                result = fn()
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc):
                    raise StoreError(f"SQLite {what} failed on {self.path}: {exc}") from exc
                if self.failing_since is None:
                    self.failing_since = time.time()
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"SQLite database {self.path} stayed locked for {self.settings.lock_retry_s:.0f}s during {what}; "
                        "close any other program writing to it (a DB browser with unsaved changes?)"
                    ) from exc
                if not warned:
                    logger.warning(
                        "SQLite database %s is locked by another process (%s); waiting and retrying "
                        "(close DB browsers with unsaved changes)", self.path, what,
                    )
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.failing_since = None
            return result

    def _write(self, sql: str, rows: Sequence[tuple], what: str) -> int:
        if not rows:
            return 0

        def txn() -> int:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(sql, rows)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return len(rows)

        return self._retry(txn, what)

    def _query(self, sql: str, params: Sequence) -> list[tuple]:
        def q() -> list[tuple]:
            with self._lock:
                return self._db.execute(sql, params).fetchall()

        return self._retry(q, "read")

    # --- writes ---------------------------------------------------------------------------------
    def _write_readings(self, rows: list[tuple] | Callable[[], Iterable[tuple]], what: str, n: int | None = None,
                        insert: tuple[str, Callable[[], Iterable[tuple]]] | None = None, extra: Sequence[tuple] = ()) -> WriteResult:
        """Insert (mid, ts, seq, flow_rate, pressure, quality, source) rows; never replace a stored one.

        ``rows`` is a list, or for a bulk import a function giving them again (``n`` of them) and
        ``insert`` the statement and rows that insert them faster (constants in the SQL): the rows
        stream into ``executemany`` and are built in full only when some were stored already.
        ``extra``: (mid, ts, name, value) of the readings' extra values, in the same transaction (a
        stored value is kept, like the reading it belongs to).
        """
        if callable(rows):
            again = rows
        else:
            n, listed = len(rows), rows
            again = lambda: listed  # noqa: E731
        if not n:
            return WriteResult()
        sql, first = insert or (_INSERT_READING, again)

        def txn() -> tuple[WriteResult, list[ReadingConflict]]:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    inserted = self._db.executemany(sql, first()).rowcount
                    conflicts: list[ReadingConflict] = []
                    if inserted < n:  # some keys were stored already (or twice in this batch)
                        conflicts = self._conflicts(list(again()))
                        self._db.executemany(_INSERT_CONFLICT, [
                            (c.site, c.meter, epoch(c.ts), conflict_variant((c.flow_rate, c.pressure, c.quality)),
                             c.flow_rate, c.pressure, c.quality, c.seq, c.source,
                             c.stored_flow_rate, c.stored_pressure, c.stored_quality, epoch(c.seen_at))
                            for c in conflicts
                        ])
                    if extra:
                        self._db.executemany(_INSERT_EXTRA, extra)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return WriteResult(inserted, n - inserted - len(conflicts), len(conflicts)), conflicts

        result, conflicts = self._retry(txn, what)
        if conflicts:
            self._log_conflicts(conflicts)
        return result

    def _conflicts(self, rows: list[tuple]) -> list[ReadingConflict]:
        """The rows whose values differ from the stored reading of their key (inside the write transaction).

        A row this batch inserted equals what is stored; one that was ignored is identical or a conflict.
        """
        by_mid: dict[int, list[int]] = defaultdict(list)
        for row in rows:
            by_mid[row[0]].append(row[1])
        stored: dict[int, dict[int, tuple]] = {}
        cols = "SELECT ts, flow_rate, pressure, quality FROM readings WHERE mid = ? AND "
        for mid, tss in by_mid.items():
            lo, hi = min(tss), max(tss)
            if hi - lo <= _DENSE_S * len(tss):
                found = self._db.execute(cols + "ts >= ? AND ts <= ?", (mid, lo, hi)).fetchall()
            else:
                keys = sorted(set(tss))
                found = []
                for i in range(0, len(keys), _IN_CHUNK):
                    part = keys[i : i + _IN_CHUNK]
                    found += self._db.execute(cols + f"ts IN ({','.join('?' * len(part))})", (mid, *part)).fetchall()
            stored[mid] = {ts: (flow, pres, quality) for ts, flow, pres, quality in found}
        names = {v: k for k, v in self._mids.items()}
        now = datetime.now(UTC).replace(microsecond=0)
        out = []
        for row in rows:
            raw = stored[row[0]][row[1]]
            if row[3:6] == raw:  # the usual redelivery: equal as they are (a NaN needs the normalised compare)
                continue
            new, old = reading_values(*row[3:6]), reading_values(*raw)
            if new != old:
                mid, ts, seq, *_, source = row
                site, meter = names[mid]
                out.append(ReadingConflict(
                    site, meter, from_epoch(ts), *new, *old, seq=None if seq is None or seq != seq else int(seq),
                    source=source or "", seen_at=now,
                ))
        return out

    def write_readings(self, readings: Sequence[Reading]) -> WriteResult:
        rows = [(self._mid(site, meter), *rest) for site, meter, *rest in reading_rows(readings)]
        extra = [(row[0], row[1], k, v) for row, r in zip(rows, readings, strict=True) if r.extra for k, v in r.extra.items()]
        return self._write_readings(rows, "write readings", extra=extra)

    def read_extra(self, site: str, meter: str, start: datetime, end: datetime) -> pd.DataFrame:
        mid = self._mid(site, meter, create=False)
        if mid is None:
            return extra_frame([])
        return extra_frame(self._query(
            "SELECT ts, name, value FROM readings_extra WHERE mid = ? AND ts >= ? AND ts < ? ORDER BY ts", (mid, epoch(start), epoch(end))))

    def write_reading_frame(self, site: str, meter: str, frame: pd.DataFrame) -> WriteResult:
        return self.write_reading_columns(site, meter, *reading_frame_columns(frame))

    def write_reading_columns(self, site: str, meter: str, ts: Sequence[int], seq: Sequence, flow: Sequence[float],
                              pressure: Sequence[float], quality: Sequence[str], source: str | Sequence[str]) -> WriteResult:
        """Plain lists, in file order (``source``: one for every row, or one per row)."""
        n = len(ts)
        if not n:
            return WriteResult()
        mid = self._mid(site, meter)
        one_source = isinstance(source, str)

        def rows() -> Iterable[tuple]:
            return zip(repeat(mid, n), ts, seq, flow, pressure, quality, repeat(source, n) if one_source else source, strict=True)

        insert = None
        if one_source:  # the meter and the source as constants: less to bind per row
            sql = _INSERT_READING.replace("VALUES (?, ?, ?, ?, ?, ?, ?)", f"VALUES ({int(mid)}, ?, ?, ?, ?, ?, {_sql_text(source)})")
            insert = (sql, lambda: zip(ts, seq, flow, pressure, quality, strict=True))
        return self._write_readings(rows, "import readings", n, insert)

    def write_anomalies(self, anomalies: Sequence[Anomaly]) -> int:
        return self._write(
            'INSERT OR REPLACE INTO anomalies (site, meter, kind, signal, start, severity, state, "end", ts, value, threshold, message) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [anomaly_row(a) for a in anomalies],
            "write anomalies",
        )

    def write_forecast(self, forecast: Forecast) -> int:
        return self._write(
            "INSERT OR REPLACE INTO forecasts (site, meter, signal, issued_at, target_time, value, model) VALUES (?, ?, ?, ?, ?, ?, ?)",
            forecast_rows(forecast),
            "write forecast",
        )

    def write_thresholds(self, thresholds: Thresholds) -> None:
        t = thresholds
        self._write(
            "INSERT OR REPLACE INTO thresholds (site, meter, signal, computed_at, method, payload) VALUES (?, ?, ?, ?, ?, ?)",
            [(t.site, t.meter, t.signal, epoch(t.computed_at), t.method, thresholds_payload(t))],
            "write thresholds",
        )

    def write_night_flow(self, items: Sequence[NightFlow]) -> int:
        return self._write(
            "INSERT OR REPLACE INTO night_flow (site, meter, day, ts, value, day_mean) VALUES (?, ?, ?, ?, ?, ?)",
            [(n.site, n.meter, n.day.isoformat(), epoch(n.ts), n.value, n.day_mean) for n in items],
            "write night flow",
        )

    def write_alert_actions(self, actions: Sequence[AlertAction]) -> int:
        return self._write(
            "INSERT OR REPLACE INTO alert_actions (id, action, ts, payload) VALUES (?, ?, ?, ?)",
            [(a.id, a.action, epoch(a.ts), a.model_dump_json()) for a in actions], "write alert actions",
        )

    def read_alert_actions(self, since: datetime) -> list[AlertAction]:
        rows = self._query("SELECT payload FROM alert_actions WHERE ts >= ? ORDER BY rowid", (epoch(since),))
        return sorted((AlertAction.model_validate_json(p) for (p,) in rows), key=lambda a: a.ts)  # stable: written order within a time

    def write_service_status(self, items: Sequence[tuple[str, bool, datetime]]) -> int:
        return self._write(
            "INSERT OR REPLACE INTO service_status (service, ts, online) VALUES (?, ?, ?)",
            [(name, epoch(ts), int(online)) for name, online, ts in items], "write service status",
        )

    # --- reads ----------------------------------------------------------------------------------
    def _reading_rows(self, site: str, meter: str, start: datetime, end: datetime) -> list[tuple]:
        mid = self._mid(site, meter, create=False)
        if mid is None:
            return []
        return self._query(
            "SELECT ts, seq, flow_rate, pressure, quality, source FROM readings WHERE mid = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (mid, epoch(start), epoch(end)),
        )

    def _anomaly_rows(self, site: str, meter: str, start: datetime, end: datetime) -> list[tuple]:
        return self._query(
            'SELECT kind, signal, severity, state, start, "end", ts, value, threshold, message FROM anomalies '
            "WHERE site = ? AND meter = ? AND start >= ? AND start < ? ORDER BY start, kind, signal",
            (site, meter, epoch(start), epoch(end)),
        )

    def _forecast_rows(self, site: str, meter: str, start: datetime, end: datetime, signal: str | None) -> list[tuple]:
        sql = (
            "SELECT signal, issued_at, target_time, value, model FROM forecasts "
            "WHERE site = ? AND meter = ? AND target_time >= ? AND target_time < ?"
        )
        params: list = [site, meter, epoch(start), epoch(end)]
        if signal:
            sql += " AND signal = ?"
            params.append(signal)
        return self._query(sql + " ORDER BY issued_at, signal, target_time", params)

    def latest_thresholds(self, site: str, meter: str, signal: str) -> Thresholds | None:
        rows = self._query(
            "SELECT payload FROM thresholds WHERE site = ? AND meter = ? AND signal = ? ORDER BY computed_at DESC LIMIT 1",
            (site, meter, signal),
        )
        return thresholds_from_payload(rows[0][0]) if rows else None

    def read_night_flow(self, site: str, meter: str, start: date, end: date) -> list[NightFlow]:
        rows = self._query(
            "SELECT day, ts, value, day_mean FROM night_flow WHERE site = ? AND meter = ? AND day >= ? AND day < ? ORDER BY day",
            (site, meter, start.isoformat(), end.isoformat()),
        )
        return [NightFlow(site, meter, date.fromisoformat(d), from_epoch(ts), v, dm) for d, ts, v, dm in rows]

    def last_reading_time(self, site: str, meter: str) -> datetime | None:
        rows = self._query("SELECT MAX(ts) FROM readings WHERE mid = ?", (self._mid(site, meter, create=False) or -1,))
        return from_epoch(rows[0][0]) if rows and rows[0][0] is not None else None

    def first_reading_time(self) -> datetime | None:
        # MIN per meter uses the (mid, ts) key; a MIN over the whole table would scan it
        rows = self._query("SELECT MIN((SELECT MIN(ts) FROM readings WHERE mid = meters.id)) FROM meters", ())
        return from_epoch(rows[0][0]) if rows and rows[0][0] is not None else None

    def read_conflicts(self, site: str, meter: str, start: datetime, end: datetime) -> list[ReadingConflict]:
        rows = self._query(
            "SELECT ts, flow_rate, pressure, quality, stored_flow_rate, stored_pressure, stored_quality, seq, source, seen_at "
            "FROM reading_conflicts WHERE site = ? AND meter = ? AND ts >= ? AND ts < ? ORDER BY ts, seen_at",
            (site, meter, epoch(start), epoch(end)),
        )
        return [
            ReadingConflict(site, meter, from_epoch(ts), f, p, q, sf, sp, sq, seq, src, from_epoch(seen))
            for ts, f, p, q, sf, sp, sq, seq, src, seen in rows
        ]

    def meters(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self._query("SELECT site, meter FROM meters WHERE EXISTS (SELECT 1 FROM readings WHERE mid = meters.id) ORDER BY site, meter", ())]

    def purge(self, before: datetime) -> int:
        """Delete records older than ``before``, ``purge_batch`` rows per transaction; the newest thresholds
        of each signal stay even when old (the detector needs bands). Returns the number of rows deleted."""
        cut = epoch(before)
        n = 0
        for (mid,) in self._query("SELECT id FROM meters", ()):  # each meter's range of the (mid, ts) key
            n += self._delete_batched("readings", "mid, ts", "mid = ? AND ts < ? ORDER BY ts", (mid, cut))
            n += self._delete_batched("readings_extra", "mid, ts, name", "mid = ? AND ts < ? ORDER BY ts", (mid, cut))
        n += self._delete_batched("anomalies", "site, meter, kind, signal, start", "start < ?", (cut,))
        n += self._delete_batched("forecasts", "site, meter, signal, issued_at, target_time", "target_time < ?", (cut,))
        n += self._delete_batched("night_flow", "site, meter, day", "ts < ?", (cut,))
        n += self._delete_batched("reading_conflicts", "site, meter, ts, variant", "ts < ?", (cut,))
        n += self._delete_batched(
            "thresholds", "site, meter, signal, computed_at",
            "computed_at < ? AND computed_at < (SELECT MAX(computed_at) FROM thresholds t2 WHERE t2.site = thresholds.site "
            "AND t2.meter = thresholds.meter AND t2.signal = thresholds.signal)",
            (cut,),
        )
        return n

    def _delete_batched(self, table: str, key: str, where: str, params: tuple) -> int:
        """DELETE the rows ``where`` selects, ``purge_batch`` per transaction (the lock is released between)."""
        sql = f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {where} LIMIT {int(self.purge_batch)})"

        def txn() -> int:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    n = self._db.execute(sql, params).rowcount
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return n

        total = 0
        while True:
            n = self._retry(txn, f"purge {table}")
            total += n
            if n < self.purge_batch:
                return total

    def close(self) -> None:
        with self._lock:
            self._db.close()
