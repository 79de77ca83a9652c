"""The forecaster service: on each hour boundary in event time, forecast the next hour of every
meter's signals.

The decisions are :class:`services.forecaster.engine.ForecastEngine`'s (one per meter: window, hour
boundary, model or baseline, fallback); this service feeds them and does the I/O:

- every meter of the site: the configured ones (``meters``) from the start, any other one from its
  first reading (up to ``limits.max_meters_per_site``); each with only the signals it has and bins
  that follow its interval;
- readings arrive through the inbox (:mod:`shared.inbox`, off paho's thread); a meter's window is
  back-filled from the store when its engine is made, and the hour boundary is crossed by reading
  timestamps (:mod:`shared.eventtime`), never by a timer;
- each forecast is stored and published; a store that fails is retried with backoff (the hour is
  crossed once, its forecast is written when the store lets it), nothing is dead-lettered;
- models per meter and signal (``models/<site>/<meter>/<signal>/current``), loaded on demand
  through one bounded cache (``forecaster.max_loaded_models``); hot reload: a retained
  ``ModelInfo`` with ``promoted=True`` swaps that meter's signal.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from services.forecaster.engine import ForecastEngine
from services.forecaster.predictor import ModelCache
from shared import modelstore
from shared.messages import Forecast, ModelInfo, Reading
from shared.service import Service
from shared.store import Store, StoreError, open_store

logger = logging.getLogger(__name__)


class ForecasterService(Service):
    name = "forecaster"

    def __init__(self, settings, *, bus=None, store: Store | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.store = store
        self._own_store = store is None
        self.models_root = settings.path(settings.models.dir)
        fc = settings.forecaster
        self.cache = ModelCache(fc.max_loaded_models, fc.threads)
        self.engines: dict[tuple[str, str], ForecastEngine] = {}
        self.last_job_ms: dict[str, float] = {}  # per signal: window, inference, store, publish

    @property
    def engine(self) -> ForecastEngine:
        """The engine of the configured (first) meter."""
        return self._engine(self.settings.site, self.settings.meter)

    @property
    def predictors(self):
        return self.engine.predictors

    # --- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)
        for m in self.settings.meter_ids:
            self._engine(self.settings.site, m)
        t = self.topics
        self.bus.subscribe(t.all_meters("reading"), Reading, self.on_reading)
        self.bus.subscribe(t.all_meters("model"), ModelInfo, self.on_model)

    def teardown(self) -> None:
        if self._own_store and self.store is not None:
            self.store.close()

    def models_dir(self, site: str, meter: str):
        """``meter``'s model folder; for the configured meter, the folder of the layout before models
        were per meter while the trainer has not moved it yet (the forecaster's volume is read-only)."""
        d = modelstore.meter_dir(self.models_root, site, meter)
        if (site, meter) == (self.settings.site, self.settings.meter) and not d.exists() and \
                modelstore.legacy_signals(self.models_root):
            return self.models_root
        return d

    def _engine(self, site: str, meter: str) -> ForecastEngine:
        e = self.engines.get((site, meter))
        if e is None:
            e = self.engines[(site, meter)] = ForecastEngine(self.settings, site, meter, self.cache)
            mdir = self.models_dir(site, meter)
            for s in e.signals:
                v = modelstore.current_version(mdir, s)
                if v is not None:
                    self.load(e, s, v)
            self.backfill(e)
        return e

    def backfill(self, e: ForecastEngine) -> None:
        try:
            last = self.store.last_reading_time(e.site, e.meter)
            if last is None:
                return
            span = timedelta(minutes=e.window.history_steps * e.step)
            n = e.window.backfill(self.store.read_readings(e.site, e.meter, last - span, last + timedelta(seconds=1)))
        except StoreError as exc:
            logger.warning("%s/%s: back-fill from the store failed (%s); the window fills from the stream", e.site, e.meter, exc)
            return
        e.seed(last)
        self.time_guard.seed((e.site, e.meter), last)
        self.last_event = max(self.last_event or last, last)
        logger.info("%s/%s: back-filled %d readings up to %s (%d-minute bins; %s)", e.site, e.meter, n, last.isoformat(),
                    e.step, ", ".join(e.signals))

    # --- models -----------------------------------------------------------------------------
    def load(self, e: ForecastEngine, signal: str, version: str) -> bool:
        mdir = self.models_dir(e.site, e.meter)
        try:
            e.load(signal, modelstore.version_dir(mdir, signal, version))
        except modelstore.ModelError as exc:
            self.counters.inc("model_load_errors")
            logger.error("%s/%s: cannot load %s model %s (%s); keeping %s", e.site, e.meter, signal, version, exc,
                         e.predictors[signal].name if signal in e.predictors else "nothing")
            return False
        self.counters.inc("model_loads")
        logger.info("%s/%s: serving %s %s", e.site, e.meter, signal, version)
        return True

    def on_model(self, topic: str, info: ModelInfo) -> None:
        if info.site != self.settings.site or not info.promoted:
            return
        e = self.engines.get((info.site, info.meter))
        if e is None or info.signal not in e.signals or e.predictors[info.signal].name == info.version:
            return  # a meter not seen yet loads its models when its engine is made
        self.load(e, info.signal, info.version)

    # --- the stream (inbox worker) ----------------------------------------------------------
    def on_reading(self, topic: str, r: Reading) -> None:
        if r.site != self.settings.site:
            return
        self.admit(r)
        e = self._engine(r.site, r.meter)
        fallbacks, skipped, holiday = e.fallbacks, e.skipped, e.holiday_naive
        out = e.add_reading(r)
        self.last_event = max(self.last_event or r.ts, r.ts)
        if e.fallbacks > fallbacks:
            logger.info("%s/%s %s: the model cannot run on this window (gap over models.max_gap_minutes, or not loadable); "
                        "served seasonal naive", r.site, r.meter, r.ts.isoformat())
        self.counters.inc("forecast_fallbacks", e.fallbacks - fallbacks)
        self.counters.inc("forecasts_skipped", e.skipped - skipped)
        self.counters.inc("forecast_holiday_naive", e.holiday_naive - holiday)
        for f in out:
            self.emit(f, e)

    def forecast(self, issued_at: datetime, meter: str | None = None) -> list[Forecast]:
        """Forecast, store and publish one meter's signals (the configured one's by default) for the
        bins after ``issued_at``."""
        e = self._engine(self.settings.site, meter or self.settings.meter)
        out = e.forecast(issued_at)
        for f in out:
            self.emit(f, e)
        return out

    def emit(self, f: Forecast, e: ForecastEngine) -> None:
        t0 = time.perf_counter()
        self.retry(lambda: self.store.write_forecast(f), f"storing the {f.meter} {f.signal} forecast of {f.issued_at.isoformat()}")
        self.bus.publish(self.topics.forecast(f.site, f.meter), f, qos=1)
        self.counters.inc("forecasts")
        self.last_job_ms[f.signal] = e.job_ms.get(f.signal, 0.0) + (time.perf_counter() - t0) * 1000
