"""The trainer service: decides *when* to train, in event time, and runs training off the MQTT path.

Every meter of the site: the configured ones (``meters``) and any other one whose readings arrive
(up to ``limits.max_meters_per_site``); one train job per meter and signal it has (a flow-only meter
never gets a pressure model, and never fails for lack of one).

Triggers per meter (each one queues a job; runs never overlap, queued requests merge):
- first training: as soon as the meter's readings span ``trainer.first_training_days`` and a signal
  it has serves no model (checked at start and at each day boundary; after an attempt that promoted
  nothing, again at each week boundary);
- periodic: when reading time crosses a ``trainer.period`` boundary (default: the year);
- on demand: a ``Command(action="train")`` on the meter's command topic (``flowwatch train --request``).

Training runs in a spawned child process (see :mod:`services.trainer.job`) driven by a worker thread,
so MQTT handling never waits on it and TensorFlow's memory goes away after each run.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from services.trainer import job
from services.trainer.publish import publish_result
from services.trainer.training import models_dir
from shared import modelstore
from shared.eventtime import BoundaryClock
from shared.messages import SIGNALS, Command, Reading
from shared.service import Service
from shared.store import Store, StoreError, open_store

logger = logging.getLogger(__name__)


class TrainerService(Service):
    name = "trainer"

    def __init__(self, settings, *, bus=None, store: Store | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.store = store
        self._own_store = store is None
        self.clocks: dict[str, BoundaryClock] = {}
        self._lock = threading.Lock()
        self._pending: dict[str, set[str]] = {}  # meter -> signals
        self._reasons: list[str] = []
        self._wake = threading.Event()
        self._first_attempted: set[str] = set()
        self._worker: threading.Thread | None = None
        self.running = threading.Event()
        self.runs_done = 0

    # --- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)
        s = self.settings
        root = s.path(s.models.dir)
        try:
            moved = modelstore.adopt_legacy(root, s.site, s.meter)
        except OSError as exc:
            logger.warning("cannot move the models of %s into %s: %s", root, modelstore.meter_dir(root, s.site, s.meter), exc)
        else:
            if moved:
                logger.info("models of %s moved to %s (models are per meter now)", ", ".join(moved), modelstore.meter_dir(root, s.site, s.meter))
        for m in s.meter_ids:
            self._meter(m)
        self.bus.subscribe(self.topics.all_meters("reading"), Reading, self.on_reading)
        self.bus.subscribe(self.topics.all_meters("command"), Command, self.on_command)
        self._worker = threading.Thread(target=self._work, name="trainer-worker", daemon=True)
        self._worker.start()
        waiting = [m for m in s.meter_ids if self._needs_model(m) and m not in self._first_attempted]
        if waiting:
            logger.info("no model yet for %s: the first training starts once the store holds %g days of a meter's readings "
                        "(trainer.first_training_days; or run 'flowwatch train'); until then the forecaster "
                        "serves seasonal naive", ", ".join(waiting), s.trainer.first_training_days)

    def teardown(self) -> None:
        self._wake.set()
        if self._worker is not None:
            self._worker.join(15)
        if self._own_store and self.store is not None:
            self.store.close()

    def _meter(self, meter: str) -> BoundaryClock:
        """The event clock of ``meter``, made (and seeded from the store) when first needed."""
        clock = self.clocks.get(meter)
        if clock is None:
            clock = self.clocks[meter] = BoundaryClock(self.settings.tz)
            site = self.settings.site
            try:
                last = self.store.last_reading_time(site, meter)
            except StoreError as exc:
                logger.warning("%s/%s: cannot read the last reading time: %s", site, meter, exc)
                last = None
            if last is not None:
                clock.seed(last)
                self.time_guard.seed((site, meter), last)
                self.last_event = max(self.last_event or last, last)
                self._maybe_first(meter, last)
        return clock

    # --- triggers ---------------------------------------------------------------------------
    def signals_of(self, meter: str) -> tuple[str, ...]:
        return tuple(self.settings.meter_spec(meter).signals)

    def request(self, reason: str, signals: tuple[str, ...] = SIGNALS, meter: str | None = None) -> None:
        meter = meter or self.settings.meter
        signals = tuple(s for s in signals if s in self.signals_of(meter))
        if not signals:
            logger.info("%s/%s: nothing to train (%s: the meter has none of these signals)", self.settings.site, meter, reason)
            return
        with self._lock:
            self._pending.setdefault(meter, set()).update(signals)
            self._reasons.append(f"{meter}: {reason}")
        self.counters.inc("train_requests")
        logger.info("training requested for %s/%s: %s (%s)", self.settings.site, meter, reason, ", ".join(signals))
        self._wake.set()

    def _needs_model(self, meter: str) -> bool:
        mdir = models_dir(self.settings, meter)
        return any(not (v := modelstore.current_version(mdir, s)) or modelstore.is_baseline(v) for s in self.signals_of(meter))

    def _maybe_first(self, meter: str, ts: datetime) -> None:
        """Queue the meter's first training when a signal has no model and enough history exists."""
        if not self._needs_model(meter):
            return
        s = self.settings
        since = ts - timedelta(days=s.trainer.first_training_days)
        try:
            enough = not self.store.read_readings(s.site, meter, since, since + timedelta(days=1)).empty
        except StoreError as exc:
            logger.warning("%s/%s: cannot check the history length: %s", s.site, meter, exc)
            return
        if enough:
            self._first_attempted.add(meter)
            self.request(f"first training: {s.trainer.first_training_days:g} days of readings", meter=meter)

    def on_reading(self, topic: str, r: Reading) -> None:
        if r.site != self.settings.site:
            return
        self.admit(r)
        clock = self._meter(r.meter)
        period = self.settings.trainer.period
        crossed = clock.advance(r.ts, ("day", "week", period))
        self.last_event = max(self.last_event or r.ts, r.ts)
        if not crossed:
            return
        if period in crossed:
            self.request(f"periodic retraining ({period} boundary {crossed[period].isoformat()})", meter=r.meter)
        elif "day" in crossed and (r.meter not in self._first_attempted or "week" in crossed):
            self._maybe_first(r.meter, r.ts)

    def on_command(self, topic: str, c: Command) -> None:
        if c.action != "train" or c.site != self.settings.site:
            return  # another service's command on this topic
        self.request(f"command at {c.requested_at.isoformat()}", (c.signal,) if c.signal else SIGNALS, c.meter)

    # --- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.stop_event.is_set():
            self._wake.wait()
            self._wake.clear()
            if self.stop_event.is_set():
                return
            with self._lock:
                jobs = {m: tuple(s for s in SIGNALS if s in sig) for m, sig in self._pending.items() if sig}
                reasons = "; ".join(self._reasons)
                self._pending.clear()
                self._reasons.clear()
            if jobs:
                self._run(jobs, reasons)

    def _run(self, jobs: dict[str, tuple[str, ...]], reasons: str) -> None:
        logger.info("training %s (%s)", "; ".join(f"{m}: {', '.join(v)}" for m, v in jobs.items()), reasons)
        self.running.set()
        try:
            results = job.run_in_child(self.settings, None, jobs, self.stop_event)
        except job.JobFailed as exc:
            self.counters.inc("train_failures")
            logger.error("training failed: %s", exc)
            return
        finally:
            self.running.clear()
        for r in results:
            self.counters.inc("models_promoted" if r["promoted"] else "models_kept")
            try:
                publish_result(self.bus, self.settings, r)
            except Exception:  # noqa: BLE001 - the model is on disk; the forecaster also reads 'current'
                logger.exception("could not publish the model message for %s %s", r.get("meter"), r["signal"])
        self.runs_done += 1
        self.counters.inc("train_runs")
