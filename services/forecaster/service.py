"""The forecaster service: on each hour boundary in event time, forecast the next hour of both signals.

The decisions are :class:`services.forecaster.engine.ForecastEngine`'s (window, hour boundary,
model or seasonal naive, fallback); this service feeds it and does the I/O:

- readings arrive through the inbox (:mod:`shared.inbox`, off paho's thread); the window is
  back-filled from the store at start, and the hour boundary is crossed by reading timestamps
  (:mod:`shared.eventtime`), never by a timer;
- each forecast is stored and published; a store that fails is retried with backoff (the hour is
  crossed once, its forecast is written when the store lets it), nothing is dead-lettered;
- hot reload: a retained ``ModelInfo`` with ``promoted=True`` swaps that signal's predictor; at start
  the versions named by ``models/<signal>/current`` are loaded.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from services.forecaster.engine import ForecastEngine
from shared import modelstore
from shared.messages import SIGNALS, Forecast, ModelInfo, Reading
from shared.service import Service
from shared.store import Store, StoreError, open_store

logger = logging.getLogger(__name__)


class ForecasterService(Service):
    name = "forecaster"

    def __init__(self, settings, *, bus=None, store: Store | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.store = store
        self._own_store = store is None
        self.models_dir = settings.path(settings.models.dir)
        self.engine = ForecastEngine(settings, settings.site, settings.meter)
        self.last_job_ms: dict[str, float] = {}  # per signal: window, inference, store, publish

    @property
    def predictors(self):
        return self.engine.predictors

    # --- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)
        for s in SIGNALS:
            v = modelstore.current_version(self.models_dir, s)
            if v is not None:
                self.load(s, v)
        self.backfill()
        st = self.settings
        self.bus.subscribe(self.topics.reading(st.site, st.meter), Reading, self.on_reading)
        self.bus.subscribe(self.topics.signal_filter(st.site, st.meter, "model"), ModelInfo, self.on_model)

    def teardown(self) -> None:
        if self._own_store and self.store is not None:
            self.store.close()

    def backfill(self) -> None:
        st = self.settings
        try:
            last = self.store.last_reading_time(st.site, st.meter)
            if last is None:
                return
            span = timedelta(minutes=self.engine.window.history_steps * st.models.step_minutes)
            n = self.engine.window.backfill(self.store.read_readings(st.site, st.meter, last - span, last + timedelta(seconds=1)))
        except StoreError as exc:
            logger.warning("back-fill from the store failed (%s); the window fills from the stream", exc)
            return
        self.engine.seed(last)
        self.time_guard.seed((st.site, st.meter), last)
        self.last_event = last
        logger.info("back-filled %d readings up to %s", n, last.isoformat())

    # --- models -----------------------------------------------------------------------------
    def load(self, signal: str, version: str) -> bool:
        try:
            self.engine.load(signal, modelstore.version_dir(self.models_dir, signal, version))
        except modelstore.ModelError as exc:
            self.counters.inc("model_load_errors")
            logger.error("cannot load %s model %s (%s); keeping %s", signal, version, exc, self.predictors[signal].name)
            return False
        self.counters.inc("model_loads")
        logger.info("serving %s model %s", signal, version)
        return True

    def on_model(self, topic: str, info: ModelInfo) -> None:
        if info.site != self.settings.site or info.meter != self.settings.meter or not info.promoted:
            return
        if self.predictors[info.signal].name == info.version:
            return
        self.load(info.signal, info.version)

    # --- the stream (inbox worker) ----------------------------------------------------------
    def on_reading(self, topic: str, r: Reading) -> None:
        if r.site != self.settings.site or r.meter != self.settings.meter:
            return
        self.admit(r)
        fallbacks, skipped = self.engine.fallbacks, self.engine.skipped
        out = self.engine.add_reading(r)
        self.last_event = max(self.last_event or r.ts, r.ts)
        if self.engine.fallbacks > fallbacks:
            logger.info("%s: the model cannot run on this window (gap over models.max_gap_minutes); served seasonal naive",
                        r.ts.isoformat())
        self.counters.inc("forecast_fallbacks", self.engine.fallbacks - fallbacks)
        self.counters.inc("forecasts_skipped", self.engine.skipped - skipped)
        for f in out:
            self.emit(f)

    def forecast(self, issued_at: datetime) -> list[Forecast]:
        """Forecast, store and publish both signals for the bins after ``issued_at``."""
        out = self.engine.forecast(issued_at)
        for f in out:
            self.emit(f)
        return out

    def emit(self, f: Forecast) -> None:
        t0 = time.perf_counter()
        self.retry(lambda: self.store.write_forecast(f), f"storing the {f.signal} forecast of {f.issued_at.isoformat()}")
        self.bus.publish(self.topics.forecast(f.site, f.meter), f, qos=1)
        self.counters.inc("forecasts")
        self.last_job_ms[f.signal] = self.engine.job_ms.get(f.signal, 0.0) + (time.perf_counter() - t0) * 1000
