"""The detector service: store every reading, run the rules, store and publish the alerts.

Flow (the service's inbox worker, :mod:`shared.inbox`):

    MQTT (QoS 1, persistent session) --network thread--> inbox --worker--> engine --> store --> ack

The inbox hands over batches of validated messages (readings, forecasts, commands). Each message
goes through the engine under a guard: one that makes a rule raise (a timestamp the calendar code
cannot place, a value no rule expected) is dead-lettered with its reason and acknowledged, and the
rest of the batch goes on. Then anomalies, night-flow figures and readings are written (all
idempotent) and the batch is acknowledged. A store that fails is retried with backoff, nothing
acknowledged and nothing dead-lettered meanwhile; a stop during that leaves the batch to be
redelivered, and a redelivered reading is found identical by the store (a reading with other
values for a stored minute is kept aside, never stored over it: counted as ``reading_conflicts``)
and is ignored by the engine (not newer than the last one seen). Subscriptions are registered before the bus connects, so
messages queued for the persistent session are not dropped unmatched.

At start the rolling windows are back-filled from the store (``backfill_hours`` of readings, or
back to the opening of a burst or pressure drop still open, the night-flow table, open alerts, the
latest thresholds and forecasts), so a restart changes no decision. The silent-meter check is the only wall-clock rule; it runs every ``silent_check_s`` in
the inbox worker (``tick``).

Retention: when event time (the readings stored) crosses a local day, everything older than the
day minus ``store.retention_days`` is purged (``Store.purge``; InfluxDB's retention policy does it
there too). The day clock is seeded at back-fill; a purge that fails is counted (``purge_errors``)
and the next day's purge covers it. The cutoff never passes wall-clock now minus the retention, so
a reading dated years ahead cannot empty the store.

The day-boundary work runs off the inbox worker, on a thread of its own (``detector-maintenance``),
so readings keep flowing while it reads weeks of history (a backlog of minute readings crosses a
day every 1,440 of them). The worker queues it after the batch that crossed the boundary is stored,
so the history read holds every reading before the boundary. A recalibration reads the store and
learns outside any lock (``DetectionEngine.learn_calibration``), then installs the new bands and
step thresholds in one step (``install_calibration``) under the engine lock, which the worker holds while it runs a batch through the rules: a batch sees the old
calibration or the new one, never half of each. Readings handled meanwhile are judged with the old
one, as the rest of the batch that crossed the boundary always was. Per meter the queue keeps the
latest boundary only, and one purge, for the latest day; a job starts ``SETTLE_S`` (2 s) after it
was queued, so while a backlog drains through many days in a second each meter is recalibrated at
most about once per 2 s, at its latest boundary (the ones it skipped: ``recalibrations_superseded``). A recalibration command goes
through the same queue (so the bands installed never go back in time). Work still queued at a stop
is not lost: the back-fill at the next start recalibrates a meter whose bands are older than its
boundary, and the next day's purge covers a missed one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from services.detector.engine import DetectionEngine
from services.detector.rules.steps import StepCalibration
from shared.bus import Bus
from shared.eventtime import BoundaryClock, floor
from shared.fileio import atomic_write
from shared.inbox import Delivery
from shared.messages import SIGNALS, Anomaly, Command, Forecast, Reading, Stored, Thresholds, stored_ranges
from shared.service import Service
from shared.settings import Settings
from shared.store import Store, StoreError, open_store

logger = logging.getLogger(__name__)

# Day-boundary work waits this long (wall clock) before it starts, so a backlog draining through many
# local days at once (a day of minute readings every fraction of a second) recalibrates each meter
# about once per SETTLE_S, at the latest boundary, not once per day crossed; live, it is a 2 s delay.
SETTLE_S = 2.0


#: Kinds whose open alert holds state that only its opening gives (the baselines a burst or a
#: pressure drop froze): the back-fill reaches back to the opening, up to BACKFILL_OPEN_MAX.
FROZEN_KINDS = ("burst", "pressure_drop")
BACKFILL_OPEN_MAX = timedelta(days=14)
BACKFILL_LEAD = timedelta(hours=1)  # readings before the opening step: its baselines


def _backfill_from(last: datetime, hours: float, anomalies: Sequence[Anomaly]) -> datetime:
    """Where a meter's back-fill starts: ``hours`` before its last reading, or earlier, to the opening of
    a burst or pressure drop still open (its baselines frozen then: replayed from there, the alert goes
    on as if there had been no restart; from 26 hours in, it closed at a restart and the store kept it
    open), at most ``BACKFILL_OPEN_MAX`` back."""
    since = last - timedelta(hours=hours)
    opened = [a.start for a in anomalies if a.state == "open" and a.kind in FROZEN_KINDS]
    if opened:
        since = min(since, max(min(opened) - BACKFILL_LEAD, last - BACKFILL_OPEN_MAX))
    return since


def latest_forecasts(site: str, meter: str, points: list[tuple]) -> list[Forecast]:
    """The latest stored forecast per signal from (signal, issued_at, target_time, value, model) points."""
    out = []
    for sig in SIGNALS:
        pts = [p for p in points if p[0] == sig]
        if not pts:
            continue
        issued = max(p[1] for p in pts)
        pts = sorted((p for p in pts if p[1] == issued), key=lambda p: p[2])
        step = int((pts[0][2] - issued).total_seconds() // 60)
        try:
            out.append(Forecast(site=site, meter=meter, signal=sig, issued_at=issued, step_minutes=max(step, 1),
                                values=tuple(p[3] for p in pts), model=str(pts[0][4]) or "unknown"))
        except ValueError as exc:
            logger.warning("stored forecast of %s/%s not understood (%s); ignored", site, meter, exc)
    return out


def read_columns(store: Store, site: str, meter: str, start: datetime, end: datetime,
                 chunk: timedelta = timedelta(days=7)) -> tuple[Any, Any, Any]:
    """(epoch, flow, pressure) numpy columns of [start, end), read a week at a time (a small peak in memory)."""
    parts = []
    t = start
    while t < end:
        parts.append(store.read_reading_columns(site, meter, t, min(t + chunk, end)))
        t += chunk
    if not parts:
        return np.asarray([]), np.asarray([]), np.asarray([])
    return tuple(np.concatenate(cols) for cols in zip(*parts, strict=True))


class DetectorService(Service):
    name = "detector"

    def __init__(self, settings: Settings, *, store: Store | None = None, bus: Bus | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.cfg = settings.detector
        self.store = store
        self._own_store = store is None
        self.engine = DetectionEngine.from_settings(settings)
        self.last_seen: dict[tuple[str, str], float] = {}
        self._logged_open: set[tuple] = set()  # alerts whose opening was logged (one line each)
        self.retention_clock = BoundaryClock(settings.tz)  # one key, "retention": the purge is store-wide
        self.tick_s = self.cfg.silent_check_s
        # The day-boundary work, off the inbox worker (module doc); the engine lock is held by whoever
        # runs readings through the rules or installs a calibration.
        self._engine_lock = threading.Lock()
        self._jobs = threading.Condition()
        # per meter, the latest boundary queued and when (monotonic) the first still waiting was queued
        self._recal_due: dict[tuple[str, str], tuple[datetime, float, bool]] = {}  # (boundary, queued, an operator's: all of it)
        self._purge_due: tuple[datetime, float] | None = None
        self.settle_s = SETTLE_S
        self._busy = False  # a job taken and not finished
        self._maint_stop = threading.Event()
        self._maint_thread: threading.Thread | None = None
        # Subscribe before connecting: a persistent session's queued messages arrive right after CONNACK.
        t = self.topics
        for kind, model in (("reading", Reading), ("forecast", Forecast), ("command", Command)):
            self.bus.subscribe(t.all_meters(kind), model, None)
        self.inbox.set_batch_handler(self._handle, self.cfg.batch_max)

    # --- start: back-fill ---------------------------------------------------------------------
    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)
        t0 = time.perf_counter()
        n = 0
        meters = self.store.meters()
        for site, meter in meters:
            n += self._backfill(site, meter)
        logger.info("back-filled %d readings of %d meter(s) from %s in %.2fs", n, len(meters), self.store.name, time.perf_counter() - t0)
        self._maint_thread = threading.Thread(target=self._maintenance_loop, name="detector-maintenance", daemon=True)
        self._maint_thread.start()

    def _backfill(self, site: str, meter: str) -> int:
        st = self.store
        last = st.last_reading_time(site, meter)
        if last is None:
            return 0
        end = last + timedelta(seconds=1)
        if (seen := self.retention_clock.last("retention")) is None or last > seen:
            self.retention_clock.seed(last, "retention")
        stored = st.read_anomaly_records(site, meter, last - timedelta(days=120), end)
        anoms = [a for a in stored if a.state == "open" or a.start >= last - timedelta(days=8)]  # open ones, and the week's
        recent = st.read_reading_records(site, meter, _backfill_from(last, self.cfg.backfill_hours, anoms), end)
        signals = set(self.engine.spec(meter)[0])  # the meter's own: a flow-only meter has no pressure bands to wait for
        ths = [th for s in signals if (th := st.latest_thresholds(site, meter, s)) is not None]
        keep = self.cfg.night_baseline_nights * 3 + 2
        local_day = last.astimezone(self.settings.tz).date()
        nights = st.read_night_flow(site, meter, local_day - timedelta(days=keep), local_day + timedelta(days=1))
        # A stop between storing a batch's alerts and publishing them (kill -9, power cut) would leave
        # them unpublished: the redelivered readings decide nothing new. Publish the latest updates
        # again; subscribers keep one state per alert identity, so a repeat is harmless.
        latest = [a for a in stored if a.ts >= last - timedelta(hours=1)]
        for a in latest:
            self.bus.publish(self.topics.anomaly(a.site, a.meter), a)
        if latest:
            self.counters.inc("anomalies_republished", len(latest))
        fcs = latest_forecasts(site, meter, st.read_forecast_points(site, meter, last - timedelta(hours=6), last + timedelta(days=8)))
        self.time_guard.seed((site, meter), last)
        self._load_calibration(site, meter)
        n = self.engine.backfill(site, meter, recent, anomalies=anoms, nights=nights, thresholds=ths, forecasts=fcs)
        self.last_seen[(site, meter)] = time.time()
        # A recalibration that was due but did not happen (first start after an import, a crash at a boundary).
        if {th.signal for th in ths} != signals:
            self.recalibrate(site, meter, end)
        else:
            due = floor(last, self.cfg.bands_period, self.settings.tz)  # the step thresholds: if theirs is due too (engine.steps_due)
            if any(th.method == "static" for th in ths):
                due = max(due, floor(last, "day", self.settings.tz))
            if min(th.computed_at for th in ths) < due:
                self.recalibrate(site, meter, due)
            else:
                for th in ths:
                    self.bus.publish(self.topics.thresholds(site, meter, th.signal), th, retain=True)
        return n

    # --- the inbox worker --------------------------------------------------------------------
    def tick(self) -> None:
        with self._engine_lock:
            self._check_silent()

    def _handle(self, batch: list[Delivery]) -> None:
        """Detect (each message guarded), write (retried), publish; the inbox then acknowledges."""
        eng, now = self.engine, time.time()
        readings: list[Reading] = []
        anomalies: list[Anomaly] = []
        commands: list[Command] = []
        receipts: dict[tuple[str, str], list[Reading]] = {}
        late0 = eng.late_readings
        with self._engine_lock:  # a calibration is installed between batches, never inside one
            self._run_rules(batch, readings, anomalies, commands, receipts, now)
            nights = eng.take_night_flows()
            due = eng.take_due()
        self.retry(lambda: self._write(anomalies, nights, readings), "detector store write")
        for a in anomalies:
            self.bus.publish(self.topics.anomaly(a.site, a.meter), a)
            self._log_anomaly(a)
        for (site, meter), rs in receipts.items():  # end-to-end delivery: the collector may drop them now
            self.bus.publish(self.topics.stored(site, meter), Stored(site=site, meter=meter, ranges=stored_ranges(rs)))
        c = self.counters
        if readings:
            c.inc("readings_stored", len(readings))
            self.last_event = readings[-1].ts
        if anomalies:
            c.inc("anomalies", len(anomalies))
        if nights:
            c.inc("night_flow_days", len(nights))
        if eng.late_readings != late0:
            c.inc("late_readings", eng.late_readings - late0)
        c.inc("batches")
        for site, meter, at in due:  # the readings before the boundary are stored: off to the maintenance thread
            self._queue_recalibration(site, meter, at)
        day = None
        for r in readings:
            day = self.retention_clock.advance(r.ts, ("day",), "retention").get("day", day)
        if day is not None:
            self._queue_purge(day)
        for cmd in commands:
            if cmd.action == "recalibrate":
                last = eng.last_time(cmd.site, cmd.meter) or self.store.last_reading_time(cmd.site, cmd.meter)
                at = last + timedelta(seconds=1) if last else datetime.now(UTC).replace(microsecond=0)
                logger.info("recalibration of %s/%s requested (%s)", cmd.site, cmd.meter, cmd.requested_at.isoformat())
                self._queue_recalibration(cmd.site, cmd.meter, at, everything=True)

    def _run_rules(self, batch: list[Delivery], readings: list[Reading], anomalies: list[Anomaly], commands: list[Command],
                   receipts: dict[tuple[str, str], list[Reading]], now: float) -> None:
        eng = self.engine
        for d in batch:
            obj = d.obj
            if isinstance(obj, Reading):
                receipts.setdefault((obj.site, obj.meter), []).append(obj)  # stored or dead-lettered: done
                if self.inbox.guard(d, lambda r=obj: (self.admit(r), anomalies.extend(eng.process(r)))):
                    readings.append(obj)
                    self.last_seen[(obj.site, obj.meter)] = now
            elif isinstance(obj, Forecast):
                self.inbox.guard(d, lambda f=obj: eng.on_forecast(f))
            else:
                commands.append(obj)

    def _write(self, anomalies: list[Anomaly], nights: list, readings: list[Reading]) -> None:
        if anomalies:
            self.store.write_anomalies(anomalies)
        if nights:
            self.store.write_night_flow(nights)
        if readings:
            self.store_readings(readings)

    def _log_anomaly(self, a: Anomaly) -> None:
        """One log line when an alert opens (warning) and when it closes (info); updates go to debug."""
        key = (a.site, a.meter, a.kind, a.signal, a.start)
        where = f"{a.site}/{a.meter} {a.kind} on {a.signal}"
        if a.state == "closed":
            minutes = (a.end - a.start).total_seconds() / 60 if a.end else 0.0
            if key in self._logged_open:
                self._logged_open.discard(key)
                logger.info("anomaly closed: %s (%s, lasted %.0f min)", where, a.severity, minutes)
            else:  # a one-reading event (spike, gap) arrives closed
                logger.warning("anomaly: %s, %s, at %s (%.0f min): %s", where, a.severity, a.start.isoformat(), minutes, a.message)
        elif key not in self._logged_open:
            self._logged_open.add(key)
            logger.warning("anomaly: %s, %s, since %s: %s", where, a.severity, a.start.isoformat(), a.message)
        else:
            logger.debug("anomaly update: %s, %s: %s", where, a.severity, a.message)

    # --- the day-boundary work, on its own thread ----------------------------------------------
    def _queue_recalibration(self, site: str, meter: str, at: datetime, everything: bool = False) -> None:
        """``everything``: the step thresholds too, whether or not their period was crossed (a command)."""
        with self._jobs:
            old = self._recal_due.get((site, meter))
            if old is not None:
                self.counters.inc("recalibrations_superseded")
            self._recal_due[(site, meter)] = (at, time.monotonic(), everything) if old is None else (max(old[0], at), old[1], old[2] or everything)
            self._jobs.notify_all()

    def _queue_purge(self, day: datetime) -> None:
        with self._jobs:
            old = self._purge_due
            self._purge_due = (day, time.monotonic()) if old is None else (max(old[0], day), old[1])
            self._jobs.notify_all()

    def _next_job(self) -> tuple[str, Any] | None:
        """The next queued job that has waited ``settle_s`` (recalibrations first, in the order queued);
        None at a stop."""
        with self._jobs:
            while not self._maint_stop.is_set():
                queued = [q for _, q, _ in self._recal_due.values()] + ([self._purge_due[1]] if self._purge_due else [])
                wait = min(queued) + self.settle_s - time.monotonic() if queued else 0.5
                if queued and wait <= 0:
                    break
                self._jobs.wait(min(max(wait, 0.01), 0.5))
            else:
                return None
            self._busy = True
            for key, (at, q, everything) in self._recal_due.items():
                if q + self.settle_s <= time.monotonic():
                    del self._recal_due[key]
                    return "recalibrate", (*key, at, everything)
            day, self._purge_due = self._purge_due[0], None
            return "purge", day

    def _maintenance_loop(self) -> None:
        while (job := self._next_job()) is not None:
            kind, arg = job
            try:
                if kind == "recalibrate":
                    self._safe_recalibrate(*arg)
                else:
                    self.purge(arg)
            except Exception:  # noqa: BLE001 - the thread must outlive a bug; the next boundary or start redoes the work
                self.counters.inc("maintenance_errors")
                logger.exception("%s at a day boundary failed (the next boundary or start redoes it)", kind)
            finally:
                with self._jobs:
                    self._busy = False
                    self._jobs.notify_all()

    def maintenance_idle(self, timeout: float) -> bool:
        """Wait until no day-boundary work is queued or running (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._jobs:
            while self._recal_due or self._purge_due is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._jobs.wait(min(left, 0.5))
        return True

    def _stop_maintenance(self) -> None:
        """Finish the job at hand; what is still queued is left to the next start (module doc)."""
        self._maint_stop.set()
        with self._jobs:
            left = len(self._recal_due) + (self._purge_due is not None)
            self._jobs.notify_all()
        t, self._maint_thread = self._maint_thread, None
        if t is not None:
            t.join(60)
        if left:
            logger.info("%d day-boundary job(s) left at stop; the next start recalibrates what is due", left)

    def _safe_recalibrate(self, site: str, meter: str, at: datetime, everything: bool) -> None:
        try:
            self.recalibrate(site, meter, at, steps=True if everything else None)
        except StoreError as exc:
            self.counters.inc("recalibration_errors")
            logger.error("recalibration of %s/%s at %s failed: %s (next boundary or command retries)", site, meter, at.isoformat(), exc)

    def purge(self, day: datetime) -> None:
        """Retention at the local day boundary ``day``; a store error is logged and counted, the next day retries."""
        keep = timedelta(days=self.settings.store.retention_days)
        before = min(day, datetime.now(UTC)) - keep
        try:
            n = self.store.purge(before)
        except StoreError as exc:
            self.counters.inc("purge_errors")
            logger.error("retention purge before %s failed: %s (the next day's purge retries)", before.isoformat(), exc)
            return
        self.counters.inc("purges")
        self.counters.inc("purged_rows", n)
        logger.info("retention: removed %d record(s) older than %s (store.retention_days=%d)", n, before.isoformat(), keep.days)

    def recalibrate(self, site: str, meter: str, at: datetime, steps: bool | None = None) -> list[Thresholds]:
        """Learn bands (and the step thresholds where due, or ``steps``) from the store, install them
        (under the engine lock), store and publish them (retained)."""
        data = read_columns(self.store, site, meter, at - timedelta(days=self.cfg.threshold_days), at)
        learned = self.engine.learn_calibration(site, meter, data, at, steps)  # the slow part, reading and learning: no lock
        with self._engine_lock:
            ths = self.engine.install_calibration(learned)
            cal = self.engine.calibration(site, meter)
        for th in ths:
            self.store.write_thresholds(th)
            self.bus.publish(self.topics.thresholds(site, meter, th.signal), th, retain=True)
        self._save_calibration(site, meter, cal)
        self.counters.inc("recalibrations")
        logger.info("thresholds of %s/%s recalibrated at %s: %s", site, meter, at.isoformat(),
                    ", ".join(f"{th.signal} {th.method} ({th.sample_days:.1f} days)" for th in ths))
        return ths

    # --- step thresholds (burst, pressure_drop), kept over a restart in a small file per meter ----
    def _calibration_path(self, site: str, meter: str) -> Path:
        return self.settings.path(Path("detector")) / "calibration" / f"{site}.{meter}.json"

    def _save_calibration(self, site: str, meter: str, cal: StepCalibration | None) -> None:
        if cal is None:
            return
        path = self._calibration_path(site, meter)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(cal.to_dict()).encode())
        except OSError as exc:
            self.counters.inc("calibration_errors")
            logger.error("could not keep the step thresholds of %s/%s in %s: %s (relearned at the next recalibration)", site, meter, path, exc)

    def _load_calibration(self, site: str, meter: str) -> None:
        path = self._calibration_path(site, meter)
        if not path.exists():
            return
        try:
            self.engine.set_calibration(site, meter, StepCalibration.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            self.counters.inc("calibration_errors")
            logger.warning("ignoring the step thresholds in %s: %s (the defaults apply until the next recalibration)", path, exc)

    def _check_silent(self) -> None:
        out = self.engine.check_silent(datetime.now(UTC), self.last_seen)
        if not out:
            return
        try:
            self.store.write_anomalies(out)
        except StoreError as exc:
            logger.error("could not store silent-meter alerts: %s", exc)
        for a in out:
            logger.warning("meter %s/%s silent: %s", a.site, a.meter, a.message)
            self.bus.publish(self.topics.anomaly(a.site, a.meter), a)
        self.counters.inc("anomalies", len(out))

    def teardown(self) -> None:
        self._stop_maintenance()
        if self.store is not None and self._own_store:
            self.store.close()
