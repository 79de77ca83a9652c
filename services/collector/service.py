"""The collector loop: source → validated Reading → disk spool → MQTT (QoS 1) → removed from the
spool when the detector reports it stored (end-to-end delivery, see forwarder.py).

- every meter of ``meters`` is read (its source: ``Settings.meter_source``); each meter has its own
  topic, sequence numbers, interval and receipts. Meters that share a connection (Modbus units on
  one RS485 port or behind one TCP gateway) are read in turn by one thread; every simulated and
  replayed meter by one more; a serial meter that talks on its own by a thread of its own. A unit
  that does not answer is counted, asked again next interval and, while it stays silent, skipped
  for a growing while (``reopen_min_s`` doubling to ``reopen_max_s``): it never holds up the
  meters next to it;
- a meter publishes only its ``signals``: a flow-only meter's pressure is null and not flagged
  missing; a register map's other values travel as ``Reading.extra``;
- one reading per interval, timestamped by the source clock aligned to the interval (a polled
  meter is asked once per interval; a meter that talks on its own gives the first good frame of
  each interval, later ones are counted as ``superseded``); simulator and replay carry their own
  event time and are paced by ``collector.speed`` (0 = as fast as possible);
- every reading gets a sequence number (kept in the spool across restarts) and quality flags;
  out-of-range values (the meter's ranges: ``Settings.limits_of``) are flagged, not dropped;
- a frame that does not parse is counted, dead-lettered with its raw bytes and the reason, and
  reading goes on; a port that fails is closed and reopened with backoff; I/O errors never end
  the service.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.collector.forwarder import Forwarder
from services.collector.frames import FrameError
from services.collector.quality import range_flags
from services.collector.simulator import align
from services.collector.sources import EndOfSource, Sample, Source, SourceIOError, make_source
from services.collector.spool import Spool
from shared.bus import Bus
from shared.messages import SIGNALS, Failing, FailureKind, Reading, ServiceStatus, Stored
from shared.service import Service, failing_state
from shared.settings import RangeLimits, Settings

logger = logging.getLogger(__name__)

REOPEN_AFTER_MISSES = 3  # polls in a row without an answer from every meter of a connection: reopen it
BACKLOG_BATCH = 500  # readings per spool transaction when a replay or simulation runs as fast as possible

COUNTERS = ("meters", "frames_read", "parsed", "rejected", "spooled", "dropped", "acked", "stored", "superseded", "no_response", "io_errors", "reopens")


@dataclass(eq=False)
class Channel:
    """One meter the collector reads: its source, topic, sequence numbers and clocks."""

    meter: str
    source: Source
    topic: str
    interval_s: int
    signals: tuple[str, ...] = SIGNALS
    limits: RangeLimits = field(default_factory=RangeLimits)  # the meter's physical ranges (Settings.limits_of)
    seq_key: str = "next_seq"
    seq: int = 0
    last_ts: datetime | None = None  # event time of the last reading (or the last slot asked)
    pace: tuple[datetime, float] | None = None  # (first event time, its wall time)
    last_reading_at: float = field(default_factory=time.time)  # wall clock of the last reading spooled (or the start)
    finished: bool = False
    misses: int = 0  # polls in a row without an answer
    skip_until: float = 0.0  # wall clock: a silent unit is not asked before this


class CollectorService(Service):
    name = "collector"

    def __init__(self, settings: Settings, *, source: Source | None = None, bus: Bus | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.cfg = settings.collector
        links: dict = {}
        self.channels: list[Channel] = []
        for i, meter in enumerate(settings.meter_ids):
            spec = settings.meter_spec(meter)
            src = source if source is not None and i == 0 else make_source(settings, meter, links)
            self.channels.append(Channel(
                meter=meter, source=src, topic=self.topics.reading(settings.site, meter), interval_s=settings.interval_of(meter),
                signals=tuple(spec.signals), limits=settings.limits_of(meter), seq_key="next_seq" if i == 0 else f"next_seq/{meter}",
            ))
            if source is not None:
                break  # a source given by the caller (tests): that one meter
        self.by_topic = {ch.topic: ch for ch in self.channels}
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        self._emit_lock = threading.Lock()  # sequence numbers, the time guard and the spool, across reader threads
        self.source_opened = threading.Event()  # set once a source is open (tests, health)
        self._threads: list[threading.Thread] = []
        for c in COUNTERS:
            self.counters.set(c, 0)
        self.counters.set("meters", len(self.channels))

    @property
    def finished(self) -> bool:
        """Every source has ended (replays)."""
        return all(ch.finished for ch in self.channels)

    @finished.setter
    def finished(self, value: bool) -> None:
        for ch in self.channels:
            ch.finished = value

    # --- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        self.spool = Spool(self.settings.path(self.cfg.spool_path), self.cfg.spool_max_rows)
        for ch in self.channels:
            ch.seq = self.spool.next_seq(ch.seq_key)
        self.forwarder = Forwarder(self.spool, self.bus, self.counters)
        self.bus.on_published = self.forwarder.on_published
        self.bus.on_disconnected = self.forwarder.on_disconnected
        self.bus.on_connected = self._on_connected
        if len(self.channels) == 1:
            self.bus.subscribe(self.topics.stored(self.settings.site, self.channels[0].meter), Stored, self._on_stored)
        else:  # one filter for the receipts of every meter (a thousand subscriptions would cost the broker)
            self.bus.subscribe(self.topics.all_meters("stored"), Stored, self._on_stored)
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
        for ch in self.channels[:10]:
            logger.info("collector reading %s from %s every %ss, publishing to %s", ch.meter, ch.source.describe(), ch.interval_s, ch.topic)
        if len(self.channels) > 10:
            logger.info("... and %d more meters (%d in all)", len(self.channels) - 10, len(self.channels))

    def _on_stored(self, topic: str, st: Stored) -> None:
        reading_topic = self.topics.reading(st.site, st.meter)
        if reading_topic not in self.by_topic:
            return  # another collector's meter
        ranges = [(lo, hi, int(t0.timestamp()), int(t1.timestamp())) for lo, hi, t0, t1 in st.ranges]
        self.forwarder.on_stored(reading_topic, ranges)

    def _on_detector_status(self, topic: str, st: ServiceStatus) -> None:
        online = st.state == "online"
        if online and not self._detector_online:
            self.forwarder.resend_unstored()
        self._detector_online = online

    def failing(self) -> dict[FailureKind, Failing]:
        """The base's failure states, and a meter silent: no reading spooled for more than one and a
        half of its intervals (a slow answer is not silence), since its last one; unhealthy after
        ``collector.unhealthy_after_intervals`` intervals. Not once a replay has ended. With several
        silent meters, the one closest to (or furthest past) its limit is reported, and the others named."""
        out = super().failing()
        now = time.time()
        silent = [ch for ch in self.channels if not ch.finished and now - ch.last_reading_at > 1.5 * ch.interval_s]
        if silent:
            limit = lambda ch: self.cfg.unhealthy_after_intervals * ch.interval_s  # noqa: E731
            worst = min(silent, key=lambda ch: ch.last_reading_at + limit(ch))
            c = self.counters
            others = f"; also silent: {', '.join(ch.meter for ch in silent if ch is not worst)}" if len(silent) > 1 else ""
            detail = (f"no reading from {worst.source.describe()} (io_errors={c.get('io_errors'):g}, "
                      f"no_response={c.get('no_response'):g}, rejected={c.get('rejected'):g}){others}")
            out["meter"] = failing_state(worst.last_reading_at, limit(worst), detail[:300])
        return out

    def _on_connected(self) -> None:
        if self.forwarder is not None:
            self.forwarder.on_connected()
        self.publish_status()

    def teardown(self) -> None:
        for t in self._threads:
            t.join(15)
        for ch in self.channels:
            self._close_source(ch)
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

    # --- the loops ---------------------------------------------------------------------------
    def run(self) -> None:
        """One reader thread per connection: meters sharing one (Modbus units on a port) in turn."""
        groups: dict[object, list[Channel]] = {}  # by id(): each group object lives as long as its sources
        for ch in self.channels:
            groups.setdefault("timed" if ch.source.timed else id(ch.source.group()), []).append(ch)
        for i, (key, group) in enumerate(groups.items()):
            if key == "timed":
                target, args = self._run_timed, (group,)
            elif group[0].source.polled:
                target, args = self._run_polled, (group,)
            else:
                target, args = self._run_single, (group[0],)
            t = threading.Thread(target=target, args=args, name=f"collector-read-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        self.stop_event.wait()

    def _run_timed(self, group: list[Channel]) -> None:
        """Every simulated and replayed meter, in one thread: each sample is emitted when its event
        time is due (paced per meter by ``collector.speed``), or, at speed 0, as fast as possible in
        batches of BACKLOG_BATCH, the meters in turn. A source that fails is reopened with backoff
        without holding up the others."""
        due: list[tuple[float, int]] = [(0.0, i) for i in range(len(group))]  # heap of (monotonic time, index)
        pending: dict[int, Sample] = {}  # a sample read, waiting for its time
        opened = [False] * len(group)
        backoff = [self.cfg.reopen_min_s] * len(group)
        while due and not self.stop_event.is_set():
            when, i = heapq.heappop(due)
            delay = when - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            ch = group[i]
            if not opened[i]:
                if not self._open_source(ch):
                    heapq.heappush(due, (time.monotonic() + backoff[i], i))
                    backoff[i] = min(backoff[i] * 2, self.cfg.reopen_max_s)
                    continue
                opened[i], backoff[i] = True, self.cfg.reopen_min_s
            nxt: float | None = time.monotonic()
            try:
                nxt = self._timed_step(ch, i, pending)
            except FrameError as exc:
                self._reject(ch, exc.reason, exc.raw)
            except EndOfSource as exc:
                logger.info("%s; the collector stays up (status shows it)", exc)
                ch.finished, nxt = True, None
                self.counters.set("source_finished", sum(c.finished for c in self.channels))
            except Exception as exc:  # noqa: BLE001 - I/O or a driver bug: reopen, never end collection
                if not isinstance(exc, OSError):
                    logger.exception("unexpected error reading %s", ch.source.describe())
                opened[i] = self._io_failed(ch, exc, wait=False)
                nxt = time.monotonic() + self.cfg.reopen_min_s
            if nxt is not None:
                heapq.heappush(due, (nxt, i))
        self.stop_event.wait()

    def _timed_step(self, ch: Channel, i: int, pending: dict[int, Sample]) -> float | None:
        """Emit what is due of a timed meter; the monotonic time to come back (None: nothing more)."""
        now = time.monotonic()
        if self.cfg.speed > 0:
            sample = pending.pop(i, None) or ch.source.read(0.0)
            if sample is None or sample.ts is None:
                return now + 1.0
            if ch.pace is None:
                ch.pace = (sample.ts, now)
            ts0, wall0 = ch.pace
            when = wall0 + (sample.ts - ts0).total_seconds() / self.cfg.speed
            if when > now:
                pending[i] = sample  # not due yet; emitted then (or never, if stopped before)
                return when
            self._emit(ch, sample.ts, sample)
            return now
        # As fast as possible (a replayed backlog): up to BACKLOG_BATCH readings per spool
        # transaction, one fsync for all of them; what was read is spooled even when the next
        # read fails (a bad row, the end of the file), and that error then goes its way.
        batch: list[Sample] = []
        try:
            while len(batch) < BACKLOG_BATCH:
                nxt = ch.source.read(0.0)
                if nxt is None or nxt.ts is None:
                    break
                batch.append(nxt)
        finally:
            self._emit_many(ch, batch)
        return now

    def _run_single(self, ch: Channel) -> None:
        """A meter that talks on its own (a serial line-protocol meter), on a connection of its own."""
        backoff = self.cfg.reopen_min_s
        opened = False
        while not self.stop_event.is_set():
            if not opened:
                if not self._open_source(ch):
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reopen_max_s)
                    continue
                opened, backoff = True, self.cfg.reopen_min_s
            if ch.finished:
                self.stop_event.wait(1.0)
                continue
            try:
                self._step(ch)
            except FrameError as exc:
                self._reject(ch, exc.reason, exc.raw)
            except EndOfSource as exc:
                logger.info("%s; the collector stays up (status shows it)", exc)
                ch.finished = True
                self.counters.set("source_finished", sum(c.finished for c in self.channels))
            except (SourceIOError, OSError) as exc:
                opened = self._io_failed(ch, exc)
            except Exception as exc:  # noqa: BLE001 - a driver bug must not end collection
                logger.exception("unexpected error reading %s", ch.source.describe())
                opened = self._io_failed(ch, exc)

    def _run_polled(self, group: list[Channel]) -> None:
        """Meters asked once per interval, in turn, over one connection (a Modbus RTU bus: one unit id
        each; a serial meter answering on request alone). A unit of a shared bus that does not answer
        twice in a row is skipped for a growing while; a failed port is reopened."""
        backoff = self.cfg.reopen_min_s
        opened = False
        while not self.stop_event.is_set():
            if not opened:
                if not self._open_source(group[0]):
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reopen_max_s)
                    continue
                opened, backoff = True, self.cfg.reopen_min_s
            now = time.time()
            due = [(ch, align(datetime.fromtimestamp(now, UTC), ch.interval_s)) for ch in group]
            due = [(ch, slot) for ch, slot in due if (ch.last_ts is None or slot > ch.last_ts) and now >= ch.skip_until]
            if not due:
                nxt = min(max(ch.skip_until, (ch.last_ts.timestamp() + ch.interval_s) if ch.last_ts else now) for ch in group)
                self.stop_event.wait(min(max(0.0, nxt - now), 1.0))
                continue
            for ch, slot in due:
                if self.stop_event.is_set():
                    break
                ch.last_ts = slot  # one question per interval, answered or not
                try:
                    sample = ch.source.read(min(float(ch.interval_s), 10.0))
                except FrameError as exc:
                    self._reject(ch, exc.reason, exc.raw)
                    continue
                except (SourceIOError, OSError) as exc:
                    opened = self._io_failed(ch, exc)
                    break
                except Exception as exc:  # noqa: BLE001 - a driver bug must not end collection
                    logger.exception("unexpected error reading %s", ch.source.describe())
                    opened = self._io_failed(ch, exc)
                    break
                if sample is None:
                    self._no_answer(ch, slot, shared=len(group) > 1)
                    if all(c.misses >= REOPEN_AFTER_MISSES for c in group):
                        # nobody on the bus answers: the adapter may be gone (unplugged, re-enumerated)
                        opened = self._io_failed(ch, SourceIOError(
                            f"no answer from any meter on it for {REOPEN_AFTER_MISSES} polls in a row"))
                        break
                    continue
                if ch.misses:
                    logger.info("%s answers again after %d missed poll(s)", ch.source.describe(), ch.misses)
                ch.misses, ch.skip_until = 0, 0.0
                self._emit(ch, slot, sample)

    def _no_answer(self, ch: Channel, slot: datetime, *, shared: bool) -> None:
        self.counters.inc("no_response")
        ch.misses += 1
        if shared and ch.misses >= 2:  # silent again: leave it alone a growing while, so it cannot hold up its bus
            pause = min(self.cfg.reopen_min_s * 2 ** (ch.misses - 2), self.cfg.reopen_max_s)
            ch.skip_until = time.time() + pause
        if ch.misses <= 3 or ch.misses % 100 == 0:
            logger.warning("%s did not answer for %s (%d in a row)", ch.source.describe(), slot.isoformat(), ch.misses)

    def _open_source(self, ch: Channel) -> bool:
        try:
            ch.source.open()
        except Exception as exc:  # noqa: BLE001 - reported and retried with backoff
            self.counters.inc("io_errors")
            logger.warning("cannot open %s: %s; retrying with backoff", ch.source.describe(), exc)
            return False
        if self.counters.get("io_errors"):
            self.counters.inc("reopens")
        logger.info("opened %s", ch.source.describe())
        self.source_opened.set()
        return True

    def _close_source(self, ch: Channel) -> None:
        try:
            ch.source.close()
        except Exception as exc:  # noqa: BLE001
            logger.debug("closing source: %s", exc)

    def _io_failed(self, ch: Channel, exc: BaseException, *, wait: bool = True) -> bool:
        """Close the failed source (and wait a moment); False: it must be reopened."""
        self.counters.inc("io_errors")
        logger.warning("%s failed: %s; closing and reopening", ch.source.describe(), exc)
        self._close_source(ch)
        if len(self.channels) == 1:
            self.source_opened.clear()
        if wait:
            self.stop_event.wait(self.cfg.reopen_min_s)
        return False

    def _step(self, ch: Channel) -> None:
        """One frame of a meter that talks on its own: the first good one of each interval counts."""
        sample = ch.source.read(1.0)
        if sample is None:
            return
        slot = align(datetime.now(UTC), ch.interval_s)
        if ch.last_ts is not None and slot <= ch.last_ts:
            self.counters.inc("frames_read")
            self.counters.inc("superseded")
            return
        self._emit(ch, slot, sample)

    # --- output ------------------------------------------------------------------------------
    def _reject(self, ch: Channel, reason: str, raw: bytes) -> None:
        self.counters.inc("frames_read")
        self.counters.inc("rejected")
        self.bus.dead_letter(ch.topic, f"bad frame from {ch.source.name} ({ch.meter}): {reason}", raw)

    def _emit(self, ch: Channel, ts: datetime, sample: Sample) -> None:
        if self.stop_event.is_set() and ch.source.timed:
            return  # stopped while pacing: this sample is not due yet
        self._emit_many(ch, [sample], ts)

    def _emit_many(self, ch: Channel, samples: list[Sample], ts: datetime | None = None) -> None:
        with self._emit_lock:
            self._spool(ch, [r for s in samples if (r := self._reading(ch, ts or s.ts, s)) is not None])

    def _reading(self, ch: Channel, ts: datetime, sample: Sample) -> Reading | None:
        """A validated Reading with the meter's next sequence number, or None (counted and dead-lettered)."""
        self.counters.inc("frames_read")
        flow = sample.flow_rate if "flow_rate" in ch.signals else None
        pressure = sample.pressure if "pressure" in ch.signals else None
        flags = (*sample.flags, *range_flags(flow, pressure, ch.limits, ch.signals))
        extra = {k: v for k, v in sample.extra.items() if v is not None} if sample.extra else None
        try:
            reading = Reading(
                site=self.settings.site, meter=ch.meter, ts=ts, seq=ch.seq,
                flow_rate=flow, pressure=pressure, quality=flags, source=ch.source.name, extra=extra or None,
            )
            self.admit(reading)  # before it moves any clock (a MessageFault is a ValueError)
        except ValueError as exc:
            self.counters.inc("rejected")
            self.bus.dead_letter(ch.topic, f"bad reading from {ch.source.name} ({ch.meter}): {exc}", sample.raw)
            return None
        self.counters.inc("parsed")
        ch.seq += 1
        return reading

    def _spool(self, ch: Channel, readings: list[Reading]) -> None:
        if not readings:
            return
        dropped = self.spool.put_many(ch.topic, [(r.seq, int(r.ts.timestamp()), r.to_json()) for r in readings], ch.seq, ch.seq_key)
        ch.last_ts = readings[-1].ts
        if self.last_event is None or readings[-1].ts > self.last_event:
            self.last_event = readings[-1].ts
        ch.last_reading_at = time.time()
        self.counters.inc("spooled", len(readings))
        if dropped:
            self.counters.inc("dropped", dropped)
        self.counters.set("spool_depth", len(self.spool))
        self.forwarder.wake()
