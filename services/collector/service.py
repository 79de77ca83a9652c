"""The collector loop: source → validated Reading → disk spool → MQTT (QoS 1) → removed from the
spool when the detector reports it stored (end-to-end delivery, see forwarder.py).

- one reading per interval, timestamped by the source clock aligned to the interval (a polled
  meter is asked once per interval; a meter that talks on its own gives the first good frame of
  each interval, later ones are counted as ``superseded``); simulator and replay carry their own
  event time and are paced by ``collector.speed`` (0 = as fast as possible);
- every reading gets a sequence number (kept in the spool across restarts) and quality flags;
  out-of-range values are flagged, not dropped;
- a frame that does not parse is counted, dead-lettered with its raw bytes and the reason, and
  reading goes on; a port that fails is closed and reopened with backoff; I/O errors never end
  the service.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from services.collector.forwarder import Forwarder
from services.collector.frames import FrameError
from services.collector.quality import range_flags
from services.collector.simulator import align
from services.collector.sources import EndOfSource, Sample, Source, SourceIOError, make_source
from services.collector.spool import Spool
from shared.bus import Bus
from shared.messages import Failing, FailureKind, Reading, ServiceStatus, Stored
from shared.service import Service, failing_state
from shared.settings import Settings

logger = logging.getLogger(__name__)

BACKLOG_BATCH = 500  # readings per spool transaction when a replay or simulation runs as fast as possible

COUNTERS = ("frames_read", "parsed", "rejected", "spooled", "dropped", "acked", "stored", "superseded", "no_response", "io_errors", "reopens")


class CollectorService(Service):
    name = "collector"

    def __init__(self, settings: Settings, *, source: Source | None = None, bus: Bus | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.cfg = settings.collector
        self.source = source or make_source(settings)
        self.topic = self.topics.reading(settings.site, settings.meter)
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        self.finished = False
        self._seq = 0
        self._open = False
        self.source_opened = threading.Event()  # set while the source is open (tests, health)
        self._last_ts: datetime | None = None
        self._pace: tuple[datetime, float] | None = None  # (first event time, its wall time)
        self._last_reading_at = time.time()  # wall clock of the last reading spooled (or the start): health
        for c in COUNTERS:
            self.counters.set(c, 0)

    # --- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        self.spool = Spool(self.settings.path(self.cfg.spool_path), self.cfg.spool_max_rows)
        self._seq = self.spool.next_seq()
        self.forwarder = Forwarder(self.spool, self.bus, self.counters)
        self.bus.on_published = self.forwarder.on_published
        self.bus.on_disconnected = self.forwarder.on_disconnected
        self.bus.on_connected = self._on_connected
        self.bus.subscribe(self.topics.stored(self.settings.site, self.settings.meter), Stored, self._on_stored)
        # The detector coming online (a first start, a restart) has a session now: send it what is
        # not stored yet (the broker dropped what it acknowledged while no detector session existed).
        self.bus.subscribe(self.topics.status("detector"), ServiceStatus, self._on_detector_status)
        self._detector_online = False
        if self.bus.connected:
            self.forwarder.on_connected()
        self.counters.set("spool_depth", len(self.spool))
        if len(self.spool):
            logger.info("spool holds %d unsent reading(s) from before; sending them first", len(self.spool))
        self.forwarder.start()
        logger.info("collector reading from %s every %ss, publishing to %s", self.source.describe(), self.cfg.interval_s, self.topic)

    def _on_stored(self, topic: str, st: Stored) -> None:
        ranges = [(lo, hi, int(t0.timestamp()), int(t1.timestamp())) for lo, hi, t0, t1 in st.ranges]
        self.forwarder.on_stored(self.topic, ranges)

    def _on_detector_status(self, topic: str, st: ServiceStatus) -> None:
        online = st.state == "online"
        if online and not self._detector_online:
            self.forwarder.resend_unstored()
        self._detector_online = online

    def failing(self) -> dict[FailureKind, Failing]:
        """The base's failure states, and the meter silent: no reading spooled for more than one and a
        half intervals (a slow answer is not silence), since the last one; unhealthy after
        ``collector.unhealthy_after_intervals`` intervals. Not once a replay has ended."""
        out = super().failing()
        last = self._last_reading_at
        if not self.finished and time.time() - last > 1.5 * self.cfg.interval_s:
            c = self.counters
            out["meter"] = failing_state(
                last, self.cfg.unhealthy_after_intervals * self.cfg.interval_s,
                f"no reading from {self.source.describe()} (io_errors={c.get('io_errors'):g}, "
                f"no_response={c.get('no_response'):g}, rejected={c.get('rejected'):g})",
            )
        return out

    def _on_connected(self) -> None:
        if self.forwarder is not None:
            self.forwarder.on_connected()
        self.publish_status()

    def teardown(self) -> None:
        self._close_source()
        if self.forwarder is not None:
            # SIGTERM hands the broker what it can; everything not yet stored stays on disk for the next start
            deadline = time.monotonic() + 5.0
            while self.bus.connected and not self.forwarder.handed_over() and time.monotonic() < deadline:
                self.forwarder.wake()
                time.sleep(0.05)
            self.forwarder.stop()
            self.forwarder.pump_once()  # remove what was acknowledged meanwhile
        if self.spool is not None:
            if len(self.spool):
                logger.info("%d reading(s) stay in the spool for the next start", len(self.spool))
            self.spool.close()

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        backoff = self.cfg.reopen_min_s
        while not self.stop_event.is_set():
            if not self._open:
                if not self._open_source():
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reopen_max_s)
                    continue
                backoff = self.cfg.reopen_min_s
            if self.finished:
                self.stop_event.wait(1.0)
                continue
            try:
                self._step()
            except FrameError as exc:
                self._reject(exc.reason, exc.raw)
            except EndOfSource as exc:
                logger.info("%s; the collector stays up (status shows it)", exc)
                self.finished = True
                self.counters.set("source_finished", 1)
            except (SourceIOError, OSError) as exc:
                self._io_failed(exc)
            except Exception as exc:  # noqa: BLE001 - a driver bug must not end collection
                logger.exception("unexpected error reading %s", self.source.describe())
                self._io_failed(exc)

    def _open_source(self) -> bool:
        try:
            self.source.open()
        except Exception as exc:  # noqa: BLE001 - reported and retried with backoff
            self.counters.inc("io_errors")
            logger.warning("cannot open %s: %s; retrying with backoff", self.source.describe(), exc)
            return False
        if self.counters.get("io_errors"):
            self.counters.inc("reopens")
        logger.info("opened %s", self.source.describe())
        self._open = True
        self.source_opened.set()
        return True

    def _close_source(self) -> None:
        if self._open:
            self._open = False
            self.source_opened.clear()
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001
                logger.debug("closing source: %s", exc)

    def _io_failed(self, exc: BaseException) -> None:
        self.counters.inc("io_errors")
        logger.warning("%s failed: %s; closing and reopening", self.source.describe(), exc)
        self._close_source()
        self.stop_event.wait(self.cfg.reopen_min_s)

    def _step(self) -> None:
        interval = self.cfg.interval_s
        if self.source.timed:
            sample = self.source.read(1.0)
            if sample is None or sample.ts is None:
                return
            if self.cfg.speed > 0:
                self._wait_event_time(sample.ts)
                self._emit(sample.ts, sample)
                return
            # As fast as possible (a replayed backlog): up to BACKLOG_BATCH readings per spool
            # transaction, one fsync for all of them; what was read is spooled even when the next
            # read fails (a bad row, the end of the file), and that error then goes its way.
            batch = [sample]
            try:
                while len(batch) < BACKLOG_BATCH:
                    nxt = self.source.read(0.0)
                    if nxt is None or nxt.ts is None:
                        break
                    batch.append(nxt)
            finally:
                self._emit_many(batch)
            return
        if self.source.polled:
            now = time.time()
            slot = align(datetime.fromtimestamp(now, UTC), interval)
            if self._last_ts is not None and slot <= self._last_ts:
                self.stop_event.wait(max(0.0, slot.timestamp() + interval - now))
                return
            self._last_ts = slot  # one question per interval, answered or not
            sample = self.source.read(min(float(interval), 10.0))
            if sample is None:
                self.counters.inc("no_response")
                logger.warning("%s did not answer for %s", self.source.describe(), slot.isoformat())
                return
            self._emit(slot, sample)
            return
        sample = self.source.read(1.0)
        if sample is None:
            return
        slot = align(datetime.now(UTC), interval)
        if self._last_ts is not None and slot <= self._last_ts:
            self.counters.inc("frames_read")
            self.counters.inc("superseded")
            return
        self._emit(slot, sample)

    def _wait_event_time(self, ts: datetime) -> None:
        speed = self.cfg.speed
        if speed <= 0:
            return
        if self._pace is None:
            self._pace = (ts, time.monotonic())
            return
        ts0, wall0 = self._pace
        due = wall0 + (ts - ts0).total_seconds() / speed
        delay = due - time.monotonic()
        if delay > 0:
            self.stop_event.wait(delay)

    # --- output ------------------------------------------------------------------------------
    def _reject(self, reason: str, raw: bytes) -> None:
        self.counters.inc("frames_read")
        self.counters.inc("rejected")
        self.bus.dead_letter(self.topic, f"bad frame from {self.source.name}: {reason}", raw)

    def _emit(self, ts: datetime, sample: Sample) -> None:
        if self.stop_event.is_set() and self.source.timed:
            return  # stopped while pacing: this sample is not due yet
        reading = self._reading(ts, sample)
        if reading is not None:
            self._spool([reading])

    def _emit_many(self, samples: list[Sample]) -> None:
        self._spool([r for s in samples if (r := self._reading(s.ts, s)) is not None])

    def _reading(self, ts: datetime, sample: Sample) -> Reading | None:
        """A validated Reading with the next sequence number, or None (counted and dead-lettered)."""
        self.counters.inc("frames_read")
        flags = (*sample.flags, *range_flags(sample.flow_rate, sample.pressure, self.settings.limits))
        try:
            reading = Reading(
                site=self.settings.site, meter=self.settings.meter, ts=ts, seq=self._seq,
                flow_rate=sample.flow_rate, pressure=sample.pressure, quality=flags, source=self.source.name,
            )
            self.admit(reading)  # before it moves any clock (a MessageFault is a ValueError)
        except ValueError as exc:
            self.counters.inc("rejected")
            self.bus.dead_letter(self.topic, f"bad reading from {self.source.name}: {exc}", sample.raw)
            return None
        self.counters.inc("parsed")
        self._seq += 1
        return reading

    def _spool(self, readings: list[Reading]) -> None:
        if not readings:
            return
        dropped = self.spool.put_many(self.topic, [(r.seq, int(r.ts.timestamp()), r.to_json()) for r in readings], self._seq)
        self._last_ts = readings[-1].ts
        self.last_event = readings[-1].ts
        self._last_reading_at = time.time()
        self.counters.inc("spooled", len(readings))
        if dropped:
            self.counters.inc("dropped", dropped)
        self.counters.set("spool_depth", len(self.spool))
        self.forwarder.wake()
