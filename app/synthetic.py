"""A tiny synthetic diurnal flow / pressure series for forecasting tests and benchmarks.

Independent of the collector's simulator on purpose: forecasting tests need a series whose shape
they control (daily and weekly pattern, AR(1) noise) and nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from shared.eventtime import DaysOff

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday


def diurnal_frame(days: float, start: datetime = START, interval_s: int = 60, seed: int = 0,
                  noise: float = 1.0, tz: str = "Asia/Seoul", holidays: str = "auto") -> pd.DataFrame:
    """Readings frame in the store's layout (UTC index; flow_rate m³/h, pressure bar). Days off
    (weekends and, as the settings' ``holidays``, the public holidays of ``tz``'s country) have the
    weekend shape."""
    rng = np.random.default_rng(seed)
    n = int(days * 86_400 // interval_s)
    idx = pd.date_range(start, periods=n, freq=f"{interval_s}s", tz="UTC", name="ts")
    local = idx.tz_convert(tz)
    h = local.hour.to_numpy() + local.minute.to_numpy() / 60.0
    off = DaysOff.from_setting(holidays, tz)
    weekend = np.array([off(d) for d in local.date])
    shape = (np.exp(-((h - 7.5) ** 2) / 3.0) + 0.8 * np.exp(-((h - 19.5) ** 2) / 4.0)
             + 0.35 * np.exp(-((h - 13) ** 2) / 8.0))
    shape = np.where(weekend, 0.7 * np.roll(shape, 0) + 0.15, shape)
    ar = _ar1(rng.normal(0, 1, n), 0.97)  # slow wandering: what a model can learn from the recent window
    par = _ar1(rng.normal(0, 1, n), 0.99)
    flow = 20 + 60 * shape + noise * (0.6 * ar + 1.5 * rng.normal(0, 1, n))
    pressure = 4.2 - 0.012 * flow + noise * (0.01 * par + 0.005 * rng.normal(0, 1, n))
    return pd.DataFrame({"seq": np.arange(n), "flow_rate": np.maximum(flow, 0), "pressure": pressure,
                         "quality": "", "source": "test"}, index=idx)


def _ar1(e: np.ndarray, phi: float) -> np.ndarray:
    """AR(1) filter: x[i] = phi * x[i-1] + e[i]."""
    x = np.empty_like(e)
    acc = 0.0
    for i, v in enumerate(e.tolist()):
        acc = phi * acc + v
        x[i] = acc
    return x
