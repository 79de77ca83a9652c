"""The store-and-forward spool: every reading is written here (SQLite, synchronous=FULL) before it
is published, and removed only when the *detector* reported it stored (end-to-end delivery, the
``stored`` receipt): the broker's PUBACK only marks it sent. Mosquitto writes its persistence file
every few seconds, so a reading it acknowledged can die with it; such a reading is still here and
is sent again on the next connection. Nothing lives in memory only: a reading survives a broker
outage or crash, a collector crash and a power cut once ``put`` returned.

The spool is bounded (``collector.spool_max_rows``): when full, the oldest readings are dropped,
counted, and logged. The sequence number of each meter's next reading is kept here too, so it keeps
increasing across restarts.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from shared.fileio import restrict_db_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpoolRow:
    id: int
    topic: str
    payload: bytes


class Spool:
    def __init__(self, path: Path, max_rows: int) -> None:
        self.path = path
        self.max_rows = max_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        restrict_db_file(path)  # 0660 less the umask, -wal and -shm alike: nothing for others
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL)")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(spool)")}
        for col, decl in (("seq", "INTEGER NOT NULL DEFAULT -1"), ("ts", "INTEGER NOT NULL DEFAULT 0")):
            if col not in cols:  # a spool written by an older collector
                self._db.execute(f"ALTER TABLE spool ADD COLUMN {col} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS spool_seq ON spool (topic, seq)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._count = self._db.execute("SELECT count(*) FROM spool").fetchone()[0]
        self.dropped = 0

    def __len__(self) -> int:
        return self._count

    def next_seq(self, seq_key: str = "next_seq") -> int:
        """The next sequence number under ``seq_key`` (one per meter); a key not written yet starts
        from the spool's first key, ``next_seq`` (a spool of a one-meter collector)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (seq_key,)).fetchone()
            if row is None:
                row = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            return int(row[0]) if row else 0

    def put(self, topic: str, payload: bytes, next_seq: int, seq: int = -1, ts: int = 0) -> int:
        """Write one reading durably (and the next sequence number, atomically). Returns how many old rows were dropped."""
        return self.put_many(topic, [(seq, ts, payload)], next_seq)

    def put_many(self, topic: str, payloads: list[tuple[int, int, bytes]], next_seq: int, seq_key: str = "next_seq") -> int:
        """Write readings ``(seq, epoch seconds, payload)`` durably in one transaction (one fsync: a
        backlog from a replay), with the next sequence number. Returns how many old rows were dropped."""
        n = len(payloads)
        if n == 0:
            return 0
        keep = payloads[-self.max_rows:] if n > self.max_rows else payloads  # more than it holds: the newest
        with self._lock:
            old = min(max(self._count + len(keep) - self.max_rows, 0), self._count)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if old:
                    self._db.execute("DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?)", (old,))
                self._db.executemany("INSERT INTO spool (topic, seq, ts, payload) VALUES (?, ?, ?, ?)", [(topic, q, t, p) for q, t, p in keep])
                self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (seq_key, next_seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            dropped = old + n - len(keep)
            self._count += len(keep) - old
            self.dropped += dropped
        if dropped:
            logger.error(
                "spool full (collector.spool_max_rows=%d): dropped the %d oldest unsent reading(s), %d in all; the broker has been unreachable for long",
                self.max_rows, dropped, self.dropped,
            )
        return dropped

    def after(self, last_id: int, limit: int) -> list[SpoolRow]:
        """Rows with id > last_id, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM spool WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        return [SpoolRow(int(i), t, bytes(p)) for i, t, p in rows]

    def remove_stored(self, topic: str, ranges: list[tuple[int, int, int, int]]) -> int:
        """Remove the rows of ``topic`` the detector stored: ``(first seq, last seq, first ts, last ts)``.

        Both the sequence and the time range must match, so a receipt from before a spool was
        recreated (its sequence numbers started again) removes nothing new."""
        # No fsync for this one: a delete lost in a power cut only sends the reading again, and the
        # store keeps it once. (Writing a reading in stays synchronous=FULL.)
        return self._each("DELETE FROM spool WHERE topic = ? AND seq BETWEEN ? AND ? AND ts BETWEEN ? AND ?",
                          [(topic, *r) for r in ranges], durable=False)

    def _each(self, sql: str, params: list[tuple], *, durable: bool = True) -> int:
        """Run a DELETE for each parameter tuple in one transaction; returns the rows removed."""
        if not params:
            return 0
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.executemany(sql, params).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")
            self._count -= max(0, n)
        return max(0, n)

    def remove(self, ids: list[int]) -> None:
        self._each("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        with self._lock:
            self._db.close()
