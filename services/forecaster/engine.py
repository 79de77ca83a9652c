"""The forecast engine of one meter: readings in, forecasts out at each hour boundary of event time. No I/O.

The twin of :class:`services.detector.engine.DetectionEngine`: the forecaster service feeds it the
reading stream and stores/publishes what it returns; ``flowwatch evaluate`` feeds it a file. So the
window → predict → fallback loop exists once.

- Only the signals the meter has (``meters[].signals``): a flow-only meter gets flow forecasts only.
- The bins follow the meter's interval (:func:`shared.features.resolution`): a 15-minute meter gets
  15-minute bins, an hourly one hourly bins; the horizon stays ``forecaster.horizon_minutes``.
- The input window is :class:`ReadingWindow` (cleaning, binning and gap filling from
  :mod:`shared.features`, the same the trainer uses).
- Per signal what the trainer promoted (``models/<site>/<meter>/<signal>/current``): a model version
  (LiteRT, loaded through the shared bounded :class:`ModelCache`) or the baseline that beat it
  (``persistence``); before any training, seasonal naive. The forecast's ``model`` field names it.
  A window the model cannot run on (a gap longer than ``models.max_gap_minutes``) or a model that
  cannot be loaded falls back to seasonal naive for that forecast (``fallbacks``); a window with no
  data at all gives no forecast (``skipped``).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from services.forecaster.predictor import (
    BASELINE_PREDICTORS,
    SEASONAL_NAIVE,
    CachedModelPredictor,
    ModelCache,
    Predictor,
    Window,
)
from services.forecaster.window import ReadingWindow
from shared import features, modelstore
from shared.eventtime import BoundaryClock
from shared.messages import Forecast, Reading

logger = logging.getLogger(__name__)


class ForecastEngine:
    """One meter's forecasting logic (window, hour boundary, predictor with fallback)."""

    def __init__(self, settings, site: str, meter: str, cache: ModelCache | None = None) -> None:
        self.site, self.meter = site, meter
        self.signals: tuple[str, ...] = tuple(settings.meter_spec(meter).signals)
        res = features.resolution(settings, meter)
        self.step = res.step_minutes
        self.steps = res.horizon_steps
        self.cache = cache if cache is not None else ModelCache(settings.forecaster.max_loaded_models, settings.forecaster.threads)
        self.window = ReadingWindow(self.step, features.history_steps(self.step, res.window_steps), res.max_gap_steps,
                                    settings.limits_of(meter), self.signals)
        self.clock = BoundaryClock(settings.tz)
        self.days_off = settings.calendar
        self.naive = BASELINE_PREDICTORS[SEASONAL_NAIVE]
        self.predictors: dict[str, Predictor] = {s: self.naive for s in self.signals}
        self.fallbacks = 0
        self.skipped = 0
        self.holiday_naive = 0  # forecasts served by seasonal naive instead of a model: a holiday ahead
        self.job_ms: dict[str, float] = {}

    # --- models -----------------------------------------------------------------------------
    def load(self, signal: str, path: Path) -> Predictor:
        """Serve the version in ``path`` (a baseline when its name is one) for ``signal``; raises
        :class:`modelstore.ModelError`."""
        if signal not in self.signals:
            raise modelstore.ModelError(f"meter {self.meter} has no {signal} (meters[].signals)")
        p: Predictor = BASELINE_PREDICTORS[path.name] if modelstore.is_baseline(path.name) else \
            CachedModelPredictor(path, self.step, self.cache)
        self.predictors[signal] = p
        return p

    def load_current(self, models_dir: Path) -> None:
        """Serve what is promoted for each signal in ``models_dir`` (this meter's folder), if anything."""
        for s in self.signals:
            v = modelstore.current_version(models_dir, s)
            if v is not None:
                self.load(s, modelstore.version_dir(models_dir, s, v))

    # --- the stream -------------------------------------------------------------------------
    def seed(self, last: datetime) -> None:
        """The event clock starts at ``last`` (the newest stored reading), crossing nothing."""
        self.clock.seed(last)

    def add(self, ts: datetime, epoch: int, flow: float | None, pres: float | None, quality: tuple[str, ...] = ()) -> list[Forecast]:
        """Add one reading; at an hour boundary return the forecasts issued at it."""
        self.window.add(epoch, {"flow_rate": flow, "pressure": pres}, quality)
        crossed = self.clock.advance(ts, ("hour",))
        return self.forecast(crossed["hour"]) if "hour" in crossed else []

    def add_reading(self, r: Reading) -> list[Forecast]:
        return self.add(r.ts, int(r.ts.timestamp()), r.flow_rate, r.pressure, r.quality)

    def forecast(self, issued_at: datetime) -> list[Forecast]:
        """Each signal's forecast for the bins after ``issued_at``."""
        out = []
        for s in self.signals:
            t0 = time.perf_counter()
            f = self.forecast_signal(s, issued_at)
            if f is not None:
                out.append(f)
                self.job_ms[s] = (time.perf_counter() - t0) * 1000
        return out

    def forecast_signal(self, signal: str, issued_at: datetime) -> Forecast | None:
        end = int(issued_at.timestamp())
        w = Window(self.window.window(signal, end), end, self.step, self.clock.tz, self.days_off)
        predictor = self.predictors[signal]
        if not modelstore.is_baseline(predictor.name) and features.holiday_ahead(self.days_off, end, self.steps, self.step, self.clock.tz):
            self.holiday_naive += 1  # seasonal naive copies the latest day off for it
            predictor = self.naive
        try:
            values = predictor.predict(w, self.steps)
        except (modelstore.InsufficientData, modelstore.ModelError) as exc:
            self.fallbacks += 1
            logger.debug("%s/%s %s at %s: %s; serving seasonal naive", self.site, self.meter, signal, issued_at.isoformat(), exc)
            predictor = self.naive
            values = predictor.predict(w, self.steps)
        if not np.isfinite(values).all():
            self.skipped += 1
            logger.warning("%s/%s %s at %s: no data to forecast from yet; skipped", self.site, self.meter, signal,
                           issued_at.isoformat())
            return None
        return Forecast(site=self.site, meter=self.meter, signal=signal, issued_at=issued_at, step_minutes=self.step,
                        values=tuple(float(v) for v in values), model=predictor.name)
