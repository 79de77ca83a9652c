"""Spool → broker, in order; the detector's ``stored`` receipt, not the PUBACK, removes a reading.

End-to-end delivery: the broker persists its queues every few seconds and can crash in between, so
its PUBACK is not the end of a reading's journey; the detector's receipt (:class:`Stored`, sent
after its store write) is. On one connection each spool row is handed to paho once (every row up
to ``_last_id`` was); on every new connection the pump rewinds and sends every reading not yet
stored again from the oldest (the broker may have lost them). paho keeps unacknowledged QoS 1 messages in
memory and resends them on reconnect; the spool already holds them, so on every disconnect paho's
copies are dropped. A reading the broker acknowledged while no detector session existed (a first
start, an expired session) is dropped by the broker: when no receipt has come for
``RESEND_MIN_S`` while readings wait, they are sent again, with the wait doubling up to
``RESEND_MAX_S`` while the detector stays silent (a detector down for hours does not get its queue
flooded with copies). One source of truth (the disk), the stream's order, and at-least-once: a
reading sent twice is stored once (identity (site, meter, ts), same values) and judged once.

Locking: ``on_published`` runs inside paho's message lock, so it only appends to a deque; the
pump thread maps message ids to spool rows under its own lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from services.collector.spool import Spool
from shared.bus import Bus
from shared.counters import Counters

logger = logging.getLogger(__name__)

RESEND_MIN_S = 15.0
RESEND_MAX_S = 3600.0


class Forwarder:
    def __init__(self, spool: Spool, bus: Bus, counters: Counters, *, window: int = 50) -> None:
        self.spool = spool
        self.bus = bus
        self.counters = counters
        self.window = window
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._acks: collections.deque[int] = collections.deque()
        self._inflight: dict[int, int] = {}  # mid -> spool id
        self._acked = 0  # PUBACKs drained from _acks, not yet counted
        self._last_id = 0  # highest spool id handed to paho on this connection
        self._resend_upto = 0  # rows up to this id were handed over before a disconnect: counted as resent
        self._resend_after = RESEND_MIN_S
        self._progress = time.monotonic()  # the last receipt (or rewind)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- callbacks from the bus (network thread) -------------------------------------------------
    def on_published(self, mid: int) -> None:
        self._acks.append(mid)
        self._wake.set()

    def on_disconnected(self) -> None:
        with self._lock:
            self._drain_acks()
            dropped = self.bus.client.drop_out_messages()
            if self._inflight:
                self._resend_upto = max(self._resend_upto, max(self._inflight.values()))
                logger.info("connection lost with %d reading(s) unacknowledged; they stay in the spool and are sent again", len(self._inflight))
            self._inflight.clear()
            self._last_id = 0
            logger.debug("dropped %d message(s) from paho's queue", len(dropped))

    def on_connected(self) -> None:
        with self._lock:
            self._drain_acks()
            self._rewind("a new connection")
        self._wake.set()

    def resend_unstored(self) -> None:
        """Send again, from the oldest, every reading not yet stored (the detector just came online)."""
        with self._lock:
            self._rewind("the detector came online")
        self._wake.set()

    def _rewind(self, why: str) -> None:
        """Under the lock: hand the spool to paho again from its oldest row."""
        self._inflight.clear()
        self._last_id = 0
        self._progress = time.monotonic()
        if len(self.spool):
            self.counters.inc("rewinds")
            logger.info("%d reading(s) not yet stored by the detector: sending them from the oldest (%s)", len(self.spool), why)

    def on_stored(self, topic: str, ranges: list[tuple[int, int, int, int]]) -> int:
        """The detector stored these readings of ``topic``: remove them from the spool."""
        n = self.spool.remove_stored(topic, ranges)
        self.counters.inc("stored", n)
        self._progress = time.monotonic()
        self._resend_after = RESEND_MIN_S
        self.counters.set("spool_depth", len(self.spool))
        return n

    # --- the pump --------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def _drain_acks(self) -> None:
        while self._acks:
            if self._inflight.pop(self._acks.popleft(), None) is not None:
                self._acked += 1

    def pump_once(self) -> None:
        with self._lock:
            self._drain_acks()
            acked, self._acked = self._acked, 0
            if acked:
                self.counters.inc("acked", acked)
            if not self.bus.connected:
                return
            if not len(self.spool):  # nothing awaits a receipt
                self._progress, self._resend_after = time.monotonic(), RESEND_MIN_S
            elif not self._inflight and time.monotonic() - self._progress > self._resend_after:
                self._rewind(f"no receipt from the detector for {self._resend_after:.0f}s")
                self._resend_after = min(self._resend_after * 2, RESEND_MAX_S)
            room = self.window - len(self._inflight)
            if room <= 0:
                return
            for row in self.spool.after(self._last_id, room):
                info = self.bus.publish(row.topic, row.payload, qos=1)
                self._last_id = row.id
                self.counters.inc("sent")
                if row.id <= self._resend_upto:
                    self.counters.inc("resent")
                if info.rc != 0:  # connection just went; on_disconnected drops it and resets
                    break
                self._inflight[info.mid] = row.id
        self.counters.set("spool_depth", len(self.spool))

    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def handed_over(self) -> bool:
        """Has the broker acknowledged every reading of the spool on this connection?"""
        with self._lock:
            return not self._inflight and not self.spool.after(self._last_id, 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self.pump_once()
            except Exception:  # noqa: BLE001 - the pump must survive; the spool keeps the data
                logger.exception("forwarding from the spool failed; retrying")
                self._stop.wait(1.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="collector-forwarder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
