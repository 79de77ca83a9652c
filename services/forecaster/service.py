"""The forecaster service: on each hour boundary in event time, forecast the next hour of both signals.

- Input window in memory (:mod:`services.forecaster.window`), fed by the reading stream and
  back-filled from the store at start; the hour boundary is crossed by reading timestamps
  (:mod:`shared.eventtime`), never by a timer.
- Per signal the promoted model version (LiteRT, no TensorFlow) or, before any model exists, the
  seasonal-naive baseline, labelled ``seasonal-naive`` in the forecast's ``model`` field. A window the
  model cannot run on (a gap longer than ``models.max_gap_minutes``) falls back to seasonal
  naive for that forecast, counted as ``forecast_fallbacks``.
- Hot reload: a retained ``ModelInfo`` with ``promoted=True`` swaps that signal's predictor; at start
  the versions named by ``models/<signal>/current`` are loaded.
- Horizons longer than the model's output are rolled forward (see ``LiteRTModel.forecast``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

import numpy as np

from services.forecaster.predictor import ModelPredictor, Predictor, SeasonalNaivePredictor, Window
from services.forecaster.window import ReadingWindow
from shared import features, modelstore
from shared.eventtime import BoundaryClock
from shared.messages import SIGNALS, Forecast, ModelInfo, Reading
from shared.service import Service
from shared.store import Store, StoreError, open_store

logger = logging.getLogger(__name__)


class ForecasterService(Service):
    name = "forecaster"

    def __init__(self, settings, *, bus=None, store: Store | None = None) -> None:
        super().__init__(settings, bus=bus)
        m = settings.models
        self.store = store
        self._own_store = store is None
        self.models_dir = settings.path(m.dir)
        self.steps = settings.forecaster.horizon_minutes // m.step_minutes
        self.window = ReadingWindow(m.step_minutes, features.history_steps(m.step_minutes, m.window_steps),
                                    m.max_gap_minutes // m.step_minutes, settings.limits)
        self.clock = BoundaryClock(settings.tz)
        self.naive = SeasonalNaivePredictor()
        self.predictors: dict[str, Predictor] = {s: self.naive for s in SIGNALS}
        self._lock = threading.Lock()
        self.last_job_ms: dict[str, float] = {}

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
            span = timedelta(minutes=self.window.history_steps * st.models.step_minutes)
            n = self.window.backfill(self.store.read_readings(st.site, st.meter, last - span, last + timedelta(seconds=1)))
        except StoreError as exc:
            logger.warning("back-fill from the store failed (%s); the window fills from the stream", exc)
            return
        with self._lock:
            self.clock.seed(last)
        self.last_event = last
        logger.info("back-filled %d readings up to %s", n, last.isoformat())

    # --- models -----------------------------------------------------------------------------
    def load(self, signal: str, version: str) -> bool:
        path = modelstore.version_dir(self.models_dir, signal, version)
        try:
            p = ModelPredictor(path, self.settings.models.step_minutes, self.settings.forecaster.threads)
        except modelstore.ModelError as exc:
            self.counters.inc("model_load_errors")
            logger.error("cannot load %s model %s (%s); keeping %s", signal, version, exc, self.predictors[signal].name)
            return False
        with self._lock:
            self.predictors[signal] = p
        self.counters.inc("model_loads")
        logger.info("serving %s model %s", signal, version)
        return True

    def on_model(self, topic: str, info: ModelInfo) -> None:
        if info.site != self.settings.site or info.meter != self.settings.meter or not info.promoted:
            return
        if self.predictors[info.signal].name == info.version:
            return
        self.load(info.signal, info.version)

    # --- the stream -------------------------------------------------------------------------
    def on_reading(self, topic: str, r: Reading) -> None:
        if r.site != self.settings.site or r.meter != self.settings.meter:
            return
        with self._lock:
            self.window.add_reading(r)
            crossed = self.clock.advance(r.ts, ("hour",))
        self.last_event = max(self.last_event or r.ts, r.ts)
        if "hour" in crossed:
            self.forecast(crossed["hour"])

    def forecast(self, issued_at: datetime) -> list[Forecast]:
        """Forecast, store and publish both signals for the bins after ``issued_at``."""
        out = []
        for s in SIGNALS:
            t0 = time.perf_counter()
            f = self.forecast_signal(s, issued_at)
            if f is None:
                continue
            self.store.write_forecast(f)
            self.bus.publish(self.topics.forecast(f.site, f.meter), f, qos=1)
            self.last_job_ms[s] = (time.perf_counter() - t0) * 1000
            self.counters.inc("forecasts")
            out.append(f)
        return out

    def forecast_signal(self, signal: str, issued_at: datetime) -> Forecast | None:
        step = self.settings.models.step_minutes
        end = int(issued_at.timestamp())
        with self._lock:
            w = Window(self.window.window(signal, end), end, step)
            predictor = self.predictors[signal]
        try:
            values = predictor.predict(w, self.steps)
        except modelstore.InsufficientData as exc:
            self.counters.inc("forecast_fallbacks")
            logger.info("%s at %s: %s; serving seasonal naive", signal, issued_at.isoformat(), exc)
            predictor = self.naive
            values = predictor.predict(w, self.steps)
        if not np.isfinite(values).all():
            self.counters.inc("forecasts_skipped")
            logger.warning("%s at %s: no data to forecast from yet; skipped", signal, issued_at.isoformat())
            return None
        st = self.settings
        return Forecast(site=st.site, meter=st.meter, signal=signal, issued_at=issued_at, step_minutes=step,
                        values=tuple(float(v) for v in values), model=predictor.name)
