"""The forecast engine: readings in, forecasts out at each hour boundary of event time. No I/O.

The twin of :class:`services.detector.engine.DetectionEngine`: the forecaster service feeds it the
reading stream and stores/publishes what it returns; ``flowwatch evaluate`` feeds it a file. So the
window → predict → fallback loop exists once.

- The input window is :class:`ReadingWindow` (cleaning, binning and gap filling from
  :mod:`shared.features`, the same the trainer uses).
- Per signal the promoted model (LiteRT) or, before any model exists, the seasonal-naive baseline,
  named in the forecast's ``model`` field. A window the model cannot run on (a gap longer than
  ``models.max_gap_minutes``) falls back to seasonal naive for that forecast (``fallbacks``);
  a window with no data at all gives no forecast (``skipped``).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from services.forecaster.predictor import ModelPredictor, Predictor, SeasonalNaivePredictor, Window
from services.forecaster.window import ReadingWindow
from shared import features, modelstore
from shared.eventtime import BoundaryClock
from shared.messages import SIGNALS, Forecast, Reading

logger = logging.getLogger(__name__)


class ForecastEngine:
    """One meter's forecasting logic (window, hour boundary, predictor with fallback)."""

    def __init__(self, settings, site: str, meter: str) -> None:
        m = settings.models
        self.site, self.meter = site, meter
        self.step = m.step_minutes
        self.steps = settings.forecaster.horizon_minutes // m.step_minutes
        self.threads = settings.forecaster.threads
        self.window = ReadingWindow(m.step_minutes, features.history_steps(m.step_minutes, m.window_steps),
                                    m.max_gap_minutes // m.step_minutes, settings.limits)
        self.clock = BoundaryClock(settings.tz)
        self.naive = SeasonalNaivePredictor()
        self.predictors: dict[str, Predictor] = {s: self.naive for s in SIGNALS}
        self.fallbacks = 0
        self.skipped = 0
        self.job_ms: dict[str, float] = {}

    # --- models -----------------------------------------------------------------------------
    def load(self, signal: str, path: Path) -> Predictor:
        """Serve the model in ``path`` for ``signal``; raises :class:`modelstore.ModelError`."""
        p = ModelPredictor(path, self.step, self.threads)
        self.predictors[signal] = p
        return p

    def load_current(self, models_dir: Path) -> None:
        """Serve the promoted version of each signal found in ``models_dir`` (if any)."""
        for s in SIGNALS:
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
        for s in SIGNALS:
            t0 = time.perf_counter()
            f = self.forecast_signal(s, issued_at)
            if f is not None:
                out.append(f)
                self.job_ms[s] = (time.perf_counter() - t0) * 1000
        return out

    def forecast_signal(self, signal: str, issued_at: datetime) -> Forecast | None:
        end = int(issued_at.timestamp())
        w = Window(self.window.window(signal, end), end, self.step)
        predictor = self.predictors[signal]
        try:
            values = predictor.predict(w, self.steps)
        except modelstore.InsufficientData as exc:
            self.fallbacks += 1
            logger.debug("%s at %s: %s; serving seasonal naive", signal, issued_at.isoformat(), exc)
            predictor = self.naive
            values = predictor.predict(w, self.steps)
        if not np.isfinite(values).all():
            self.skipped += 1
            logger.warning("%s at %s: no data to forecast from yet; skipped", signal, issued_at.isoformat())
            return None
        return Forecast(site=self.site, meter=self.meter, signal=signal, issued_at=issued_at, step_minutes=self.step,
                        values=tuple(float(v) for v in values), model=predictor.name)
