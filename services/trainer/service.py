"""The trainer service: decides *when* to train, in event time, and runs training off the MQTT path.

Triggers (each one queues a run; runs never overlap, queued requests merge):
- first training: as soon as the readings span ``trainer.first_training_days`` and a signal has no
  promoted model (checked at start and at each day boundary; after an attempt that promoted
  nothing, again at each week boundary);
- periodic: when reading time crosses a ``trainer.period`` boundary (default: the year);
- on demand: a ``Command(action="train")`` on this meter's command topic (``flowwatch train --request``).

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
        self.clock = BoundaryClock(settings.tz)
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._reasons: list[str] = []
        self._wake = threading.Event()
        self._first_attempted = False
        self._worker: threading.Thread | None = None
        self.running = threading.Event()
        self.runs_done = 0

    # --- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)
        s = self.settings
        last = self.store.last_reading_time(s.site, s.meter)
        if last is not None:
            self.clock.seed(last)
            self.time_guard.seed((s.site, s.meter), last)
            self.last_event = last
            self._maybe_first(last)
        self.bus.subscribe(self.topics.reading(s.site, s.meter), Reading, self.on_reading)
        self.bus.subscribe(self.topics.command(s.site, s.meter), Command, self.on_command)
        self._worker = threading.Thread(target=self._work, name="trainer-worker", daemon=True)
        self._worker.start()
        if self._needs_model() and not self._first_attempted:
            logger.info("no model yet: the first training starts once the store holds %g days of readings "
                        "(trainer.first_training_days; or run 'flowwatch train'); until then the forecaster "
                        "serves seasonal naive", s.trainer.first_training_days)

    def teardown(self) -> None:
        self._wake.set()
        if self._worker is not None:
            self._worker.join(15)
        if self._own_store and self.store is not None:
            self.store.close()

    # --- triggers ---------------------------------------------------------------------------
    def request(self, reason: str, signals: tuple[str, ...] = SIGNALS) -> None:
        with self._lock:
            self._pending.update(signals)
            self._reasons.append(reason)
        self.counters.inc("train_requests")
        logger.info("training requested: %s (%s)", reason, ", ".join(signals))
        self._wake.set()

    def _needs_model(self) -> bool:
        mdir = models_dir(self.settings)
        return any(modelstore.current_version(mdir, s) is None for s in SIGNALS)

    def _maybe_first(self, ts: datetime) -> None:
        """Queue the first training when a signal has no model and enough history exists."""
        if not self._needs_model():
            return
        s = self.settings
        since = ts - timedelta(days=s.trainer.first_training_days)
        try:
            enough = not self.store.read_readings(s.site, s.meter, since, since + timedelta(days=1)).empty
        except StoreError as exc:
            logger.warning("cannot check the history length: %s", exc)
            return
        if enough:
            self._first_attempted = True
            self.request(f"first training: {s.trainer.first_training_days:g} days of readings")

    def on_reading(self, topic: str, r: Reading) -> None:
        if r.site != self.settings.site or r.meter != self.settings.meter:
            return
        self.admit(r)
        crossed = self.clock.advance(r.ts, ("day", "week", self.settings.trainer.period))
        self.last_event = max(self.last_event or r.ts, r.ts)
        if not crossed:
            return
        if self.settings.trainer.period in crossed:
            self.request(f"periodic retraining ({self.settings.trainer.period} boundary {crossed[self.settings.trainer.period].isoformat()})")
        elif "day" in crossed and (not self._first_attempted or "week" in crossed):
            self._maybe_first(r.ts)

    def on_command(self, topic: str, c: Command) -> None:
        if c.action != "train":
            return  # another service's command on this topic
        self.request(f"command at {c.requested_at.isoformat()}", (c.signal,) if c.signal else SIGNALS)

    # --- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.stop_event.is_set():
            self._wake.wait()
            self._wake.clear()
            if self.stop_event.is_set():
                return
            with self._lock:
                signals = tuple(s for s in SIGNALS if s in self._pending)
                reasons = "; ".join(self._reasons)
                self._pending.clear()
                self._reasons.clear()
            if signals:
                self._run(signals, reasons)

    def _run(self, signals: tuple[str, ...], reasons: str) -> None:
        logger.info("training %s (%s)", ", ".join(signals), reasons)
        self.running.set()
        try:
            results = job.run_in_child(self.settings, None, signals, self.stop_event)
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
                logger.exception("could not publish the model message for %s", r["signal"])
        self.runs_done += 1
        self.counters.inc("train_runs")
