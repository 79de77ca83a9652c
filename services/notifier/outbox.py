"""The durable outbox: every notification is written here before anyone tries to send it.

One SQLite file in data_dir (``notifier.outbox``), ``synchronous=FULL``: a committed row survives a
kill of the notifier and a power cut of the box. The anomaly that caused it is acknowledged to the
broker only after the commit, so nothing is lost between the two.

- **Once per transition:** a row's key is ``alert id : transition : channel``; ``INSERT OR IGNORE``
  makes a redelivered anomaly, a restart or a replay enqueue nothing new. A row is marked ``sent``
  right after the channel accepted it; the only window for a second copy is a crash between the
  server's acceptance and that commit (milliseconds). The key travels with the message (webhook
  header ``Idempotency-Key``, e-mail ``Message-ID``) so a receiver can drop such a copy.
- **Retry:** a failed send is tried again after ``retry_min_s``, doubling up to ``retry_max_s``;
  after ``give_up_after_hours`` the row is ``dropped`` (counted and logged).
- **Held:** a row's ``due`` time may lie ahead (quiet hours, a flapping summary at the end of its
  window).
- The ``alerts`` table remembers each alert's last state, so a restart knows what was told.

Locking: the inbox worker enqueues and the sender thread takes due rows; one lock around the one
connection serialises them (each call is a short transaction, never a network call).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from services.notifier.policy import Notification
from shared.fileio import restrict_db_file
from shared.store.base import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY, site TEXT NOT NULL, meter TEXT NOT NULL, kind TEXT NOT NULL, signal TEXT NOT NULL,
    severity TEXT NOT NULL, state TEXT NOT NULL, anomaly TEXT NOT NULL, notified_at REAL NOT NULL, escalations INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY, channel TEXT NOT NULL, transition TEXT NOT NULL, site TEXT NOT NULL, meter TEXT NOT NULL,
    kind TEXT NOT NULL, severity TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL, data TEXT NOT NULL,
    created REAL NOT NULL, due REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'pending',
    sent_at REAL, last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, due);
CREATE INDEX IF NOT EXISTS outbox_flap ON outbox (site, meter, kind, channel, created);
"""


class OutboxError(StoreError):
    """The outbox file cannot be read or written (the inbox retries the message)."""


@dataclass
class Row:
    key: str
    channel: str
    transition: str
    site: str
    meter: str
    kind: str
    severity: str
    subject: str
    body: str
    data: dict
    created: float
    attempts: int


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            restrict_db_file(path)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open the notifier outbox {path}: {exc} (check notifier.outbox and data_dir)") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, fn, what: str):  # noqa: ANN001, ANN202
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                raise OutboxError(f"notifier outbox {self.path}: {what} failed: {exc}") from exc

    def _query(self, fn, what: str):  # noqa: ANN001, ANN202
        """A read: the same lock and error wrapping as ``_run``, without a write transaction."""
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise OutboxError(f"notifier outbox {self.path}: {what} failed: {exc}") from exc

    # --- alerts -------------------------------------------------------------------------------
    def alert(self, aid: str) -> dict | None:
        def q(db: sqlite3.Connection) -> dict | None:
            r = db.execute("SELECT state, severity, notified_at, escalations, anomaly FROM alerts WHERE alert_id = ?", (aid,)).fetchone()
            return None if r is None else {"state": r[0], "severity": r[1], "notified_at": r[2], "escalations": r[3], "anomaly": r[4]}
        return self._query(q, "read alert")

    def open_alerts(self, due_before: float, max_escalations: int) -> list[dict]:
        """Open critical alerts last notified at or before ``due_before`` with fewer than
        ``max_escalations`` escalations: the ones due for an escalation."""
        def q(db: sqlite3.Connection) -> list[dict]:
            rows = db.execute(
                "SELECT alert_id, severity, notified_at, escalations, anomaly FROM alerts "
                "WHERE state = 'open' AND severity = 'critical' AND notified_at <= ? AND escalations < ?",
                (due_before, max_escalations)).fetchall()
            return [{"alert_id": r[0], "severity": r[1], "notified_at": r[2], "escalations": r[3], "anomaly": r[4]} for r in rows]
        return self._query(q, "read open alerts")

    def record(self, aid: str, anomaly_json: str, a_fields: tuple, notifications: list[tuple[Notification, float, str]],
               *, notified_at: float, escalations: int | None = None) -> int:
        """In one transaction: remember the alert's state and enqueue ``notifications`` (each with
        its due time and its severity). Returns how many rows were new."""
        site, meter, kind, signal, severity, state = a_fields

        def tx(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO alerts (alert_id, site, meter, kind, signal, severity, state, anomaly, notified_at, escalations) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, 0)) ON CONFLICT (alert_id) DO UPDATE SET severity = excluded.severity, "
                "state = excluded.state, anomaly = excluded.anomaly, notified_at = excluded.notified_at, "
                "escalations = COALESCE(?, escalations)",
                (aid, site, meter, kind, signal, severity, state, anomaly_json, notified_at, escalations, escalations),
            )
            return sum(self._insert(db, n, due, sev, notified_at) for n, due, sev in notifications)
        return self._run(tx, "record alert")

    @staticmethod
    def _insert(db: sqlite3.Connection, n: Notification, due: float, severity: str, now: float) -> int:
        d = n.data
        cur = db.execute(
            "INSERT OR IGNORE INTO outbox (key, channel, transition, site, meter, kind, severity, subject, body, data, created, due) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (n.key, n.channel, n.transition, d["site"], d["meter"], d["kind"], severity, n.subject, n.text, json.dumps(d), now, due),
        )
        return cur.rowcount

    # --- flapping -----------------------------------------------------------------------------
    def recent_count(self, site: str, meter: str, kind: str, channel: str, since: float) -> int:
        def q(db: sqlite3.Connection) -> int:
            return db.execute(
                "SELECT COUNT(*) FROM outbox WHERE site = ? AND meter = ? AND kind = ? AND channel = ? AND created >= ? "
                "AND transition != 'summary' AND state != 'silenced'", (site, meter, kind, channel, since)).fetchone()[0]
        return self._query(q, "count recent")

    def hold_back(self, summary: Notification, due: float, now: float) -> int:
        """Count one more notification into the pending flapping summary of its meter, kind and
        channel; the first one held creates it (``summary``, sent at ``due``: the end of a window
        from then). Returns the count held back so far."""
        d = summary.data

        def tx(db: sqlite3.Connection) -> int:
            r = db.execute(
                "SELECT key, data, subject, body FROM outbox WHERE transition = 'summary' AND state = 'pending' AND site = ? AND meter = ? "
                "AND kind = ? AND channel = ?", (d["site"], d["meter"], d["kind"], summary.channel)).fetchone()
            if r is None:
                self._insert(db, summary, due, "warning", now)
                return summary.data["count"]
            key, data = r[0], json.loads(r[1])
            old = int(data.get("count", 0))
            data["count"] = old + 1
            subject = r[2].replace(f": {old} held back", f": {old + 1} held back")
            body = r[3].replace(f"{old} more", f"{old + 1} more")
            db.execute("UPDATE outbox SET data = ?, subject = ?, body = ? WHERE key = ? AND state = 'pending'",
                       (json.dumps(data), subject, body, key))
            return data["count"]
        return self._run(tx, "hold back")

    # --- the sender ---------------------------------------------------------------------------
    def due(self, now: float, limit: int = 50) -> list[Row]:
        def q(db: sqlite3.Connection) -> list[Row]:
            rows = db.execute(
                "SELECT key, channel, transition, site, meter, kind, severity, subject, body, data, created, attempts FROM outbox "
                "WHERE state = 'pending' AND due <= ? ORDER BY due, created LIMIT ?", (now, limit)).fetchall()
            return [Row(*r[:9], json.loads(r[9]), r[10], r[11]) for r in rows]
        return self._query(q, "read due")

    def mark(self, key: str, state: str, now: float, error: str = "") -> None:
        self._run(lambda db: db.execute("UPDATE outbox SET state = ?, sent_at = ?, last_error = ? WHERE key = ?",
                                        (state, now, error[:500], key)), f"mark {state}")

    def retry_later(self, key: str, due: float, error: str) -> None:
        self._run(lambda db: db.execute("UPDATE outbox SET attempts = attempts + 1, due = ?, last_error = ? WHERE key = ?",
                                        (due, error[:500], key)), "reschedule")

    def purge(self, before: float) -> int:
        """Remove finished notifications created and alerts closed before ``before`` (pending ones stay)."""
        def tx(db: sqlite3.Connection) -> int:
            n = db.execute("DELETE FROM outbox WHERE state != 'pending' AND created < ?", (before,)).rowcount
            return n + db.execute("DELETE FROM alerts WHERE state = 'closed' AND notified_at < ?", (before,)).rowcount
        return self._run(tx, "purge")

    def counts(self) -> dict[str, int]:
        return dict(self._query(lambda db: db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall(), "count"))

    def rows(self) -> list[dict]:
        """Every row, oldest first (``flowwatch alerts list --outbox``, tests)."""
        def q(db: sqlite3.Connection) -> list[dict]:
            cur = db.execute("SELECT key, channel, transition, state, attempts, created, due, sent_at, last_error FROM outbox ORDER BY created")
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        return self._query(q, "list")
