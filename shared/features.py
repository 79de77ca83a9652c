"""Feature engineering for forecasting: the ONE module both the trainer and the forecaster use.

Everything that turns readings into model inputs lives here, so training and serving can't drift:

- **cleaning**: a value is dropped (NaN) when it is missing, flagged (``<signal>_missing``,
  ``<signal>_out_of_range``, ``checksum_failed``) or outside the physical limits;
- **resampling** to the forecast resolution on a fixed UTC grid: bin ``[T - step, T)`` is labelled
  by its end ``T``, its value is the mean of the distinct valid readings in it. A forecast issued at
  ``T`` uses bins up to ``T`` and predicts the bins ending ``T + step, T + 2 step, ...``
  (``Forecast.values[i]`` is for ``issued_at + (i+1) * step``);
- **gap handling**: runs of up to ``max_gap_steps`` missing bins are filled (linear inside,
  carried forward at the end); longer gaps stay NaN and windows touching them are not used;
- **per-step features**: scaled value, hour of day and day of week (local time) as sin/cos;
- **baselines**: persistence and seasonal naive (same time last week, else the same time on the
  latest earlier day of the same day type, weekday or weekend, else on the latest day, else nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from shared.eventtime import DaysOff, wall_clock_back, weekend
from shared.settings import RangeLimits

N_FEATURES = 5  # scaled value, sin/cos hour of day, sin/cos day of week
FEATURE_NAMES = ("value", "hour_sin", "hour_cos", "dow_sin", "dow_cos")
DAY_S = 86_400
WEEK_S = 7 * DAY_S

BAD_FLAGS = {
    "flow_rate": ("flow_rate_missing", "flow_rate_out_of_range", "checksum_failed"),
    "pressure": ("pressure_missing", "pressure_out_of_range", "checksum_failed"),
}


# --- cleaning -----------------------------------------------------------------------------------
def _limits(signal: str, limits: RangeLimits) -> tuple[float, float]:
    if signal == "flow_rate":
        return limits.flow_rate_min, limits.flow_rate_max
    if signal == "pressure":
        return limits.pressure_min, limits.pressure_max
    raise ValueError(f"unknown signal {signal!r}; one of flow_rate, pressure")


def valid_value(signal: str, value: float | None, quality: Iterable[str], limits: RangeLimits) -> float | None:
    """The value if it may be used for forecasting, else None (one reading; the forecaster's path)."""
    if value is None or not math.isfinite(value):
        return None
    if any(f in BAD_FLAGS[signal] for f in quality):
        return None
    lo, hi = _limits(signal, limits)
    return value if lo <= value <= hi else None


def clean_values(signal: str, values: np.ndarray, quality: Iterable[str], limits: RangeLimits) -> np.ndarray:
    """Vectorised :func:`valid_value` (the trainer's path): invalid values become NaN."""
    v = np.asarray(values, dtype="float64").copy()
    q = pd.Series(list(quality), dtype="object").fillna("").astype(str)
    bad = np.zeros(len(v), dtype=bool)
    for flag in BAD_FLAGS[signal]:
        bad |= q.str.contains(flag, regex=False).to_numpy()
    lo, hi = _limits(signal, limits)
    with np.errstate(invalid="ignore"):
        bad |= ~np.isfinite(v) | (v < lo) | (v > hi)
    v[bad] = np.nan
    return v


# --- resampling ---------------------------------------------------------------------------------
def bin_end(epoch_s: int | np.ndarray, step_minutes: int) -> int | np.ndarray:
    """End (label) of the bin ``[T - step, T)`` holding ``epoch_s``."""
    step = 60 * step_minutes
    return (epoch_s // step) * step + step


def resample(epochs: np.ndarray, values: np.ndarray, step_minutes: int,
             start: int | None = None, end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the valid values per bin on the full grid ``(bin ends, means)``; empty bins are NaN.

    ``values`` must already be cleaned (NaN = unusable). Duplicate timestamps count once.
    ``start`` / ``end`` (bin ends, inclusive) widen or cut the grid.
    """
    step = 60 * step_minutes
    epochs = np.asarray(epochs, dtype="int64")
    values = np.asarray(values, dtype="float64")
    if len(epochs):
        epochs, first = np.unique(epochs, return_index=True)
        values = values[first]
    ok = np.isfinite(values)
    ends = bin_end(epochs[ok], step_minutes)
    lo = start if start is not None else (int(ends.min()) if len(ends) else None)
    hi = end if end is not None else (int(ends.max()) if len(ends) else None)
    if lo is None or hi is None or hi < lo:
        return np.empty(0, dtype="int64"), np.empty(0)
    grid = np.arange(lo, hi + step, step, dtype="int64")
    idx = (ends - lo) // step
    keep = (idx >= 0) & (idx < len(grid))
    sums = np.bincount(idx[keep], weights=values[ok][keep], minlength=len(grid))
    counts = np.bincount(idx[keep], minlength=len(grid))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return grid, means


def fill_gaps(values: np.ndarray, max_gap_steps: int) -> np.ndarray:
    """Fill NaN runs of at most ``max_gap_steps``: linearly inside, carried forward at the end.

    Longer runs and leading NaN stay NaN (windows touching them are not used).
    """
    v = np.asarray(values, dtype="float64").copy()
    n = len(v)
    if n == 0 or max_gap_steps <= 0:
        return v
    isnan = np.isnan(v)
    if not isnan.any():
        return v
    # run boundaries of NaN stretches
    d = np.diff(np.concatenate(([0], isnan.view(np.int8), [0])))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    for s, e in zip(starts, stops, strict=True):
        length = e - s
        if length > max_gap_steps or s == 0:
            continue
        left = v[s - 1]
        if e < n:
            right = v[e]
            v[s:e] = left + (right - left) * np.arange(1, length + 1) / (length + 1)
        else:
            v[s:e] = left
    return v


def series_from_frame(frame: pd.DataFrame, signal: str, step_minutes: int, limits: RangeLimits,
                      max_gap_steps: int, end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Readings frame (store layout) -> cleaned, resampled, gap-filled ``(bin ends, values)``."""
    if frame.empty:
        return np.empty(0, dtype="int64"), np.empty(0)
    epochs = frame.index.as_unit("s").asi8
    quality = frame["quality"].tolist() if "quality" in frame else [""] * len(frame)
    vals = clean_values(signal, frame[signal].to_numpy(dtype="float64", na_value=np.nan), quality, limits)
    grid, means = resample(epochs, vals, step_minutes, end=end)
    return grid, fill_gaps(means, max_gap_steps)


# --- scaling and features -----------------------------------------------------------------------
@dataclass(frozen=True)
class Scaler:
    """Standard scaler of one signal (JSON, not pickle)."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        v = np.asarray(values, dtype="float64")
        v = v[np.isfinite(v)]
        if len(v) == 0:
            raise ValueError("cannot fit a scaler on no valid values")
        std = float(v.std())
        return cls(mean=float(v.mean()), std=std if std > 1e-9 else 1.0)

    def transform(self, v: np.ndarray) -> np.ndarray:
        return (np.asarray(v, dtype="float64") - self.mean) / self.std

    def inverse(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v, dtype="float64") * self.std + self.mean

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def calendar(ends: np.ndarray, tz: ZoneInfo | str) -> np.ndarray:
    """``(n, 4)``: sin/cos of local hour of day and of day of week at each bin end."""
    idx = pd.DatetimeIndex(pd.to_datetime(np.asarray(ends, dtype="int64"), unit="s", utc=True)).tz_convert(
        str(tz) if not isinstance(tz, str) else tz
    )
    hour = (idx.hour.to_numpy() + idx.minute.to_numpy() / 60.0) / 24.0
    dow = (idx.day_of_week.to_numpy() + hour) / 7.0
    a, b = 2 * np.pi * hour, 2 * np.pi * dow
    return np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1)


def step_features(values: np.ndarray, ends: np.ndarray, scaler: Scaler, tz: ZoneInfo | str) -> np.ndarray:
    """``(n, N_FEATURES)`` float32 per-step model inputs."""
    scaled = scaler.transform(values)[:, None]
    return np.concatenate([scaled, calendar(ends, tz)], axis=1).astype("float32")


def training_windows(values: np.ndarray, ends: np.ndarray, scaler: Scaler, tz: ZoneInfo | str,
                     window_steps: int, out_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All complete windows: ``X (m, window, F)``, ``Y (m, out)`` scaled, and the issue index of each.

    Window k ends at bin ``i = issue[k]`` (the forecast's issue time) and targets bins
    ``i+1 .. i+out``. Windows or targets touching NaN are left out.
    """
    n = len(values)
    if n < window_steps + out_steps:
        return (np.empty((0, window_steps, N_FEATURES), "float32"), np.empty((0, out_steps), "float32"),
                np.empty(0, dtype="int64"))
    feats = step_features(values, ends, scaler, tz)
    scaled = feats[:, 0]
    X = np.lib.stride_tricks.sliding_window_view(feats, window_steps, axis=0).transpose(0, 2, 1)
    X = X[: n - window_steps - out_steps + 1]
    Y = np.lib.stride_tricks.sliding_window_view(scaled[window_steps:], out_steps)
    Y = Y[: len(X)]
    issue = np.arange(window_steps - 1, window_steps - 1 + len(X))
    good = np.isfinite(X).all(axis=(1, 2)) & np.isfinite(Y).all(axis=1)
    return np.ascontiguousarray(X[good]), np.ascontiguousarray(Y[good]), issue[good]


# --- baselines ----------------------------------------------------------------------------------
def persistence(history: np.ndarray, steps: int) -> np.ndarray:
    """The last valid value repeated; NaN when there is none."""
    h = np.asarray(history, dtype="float64")
    ok = np.flatnonzero(np.isfinite(h))
    return np.full(steps, h[ok[-1]] if len(ok) else np.nan)


def holiday_ahead(off: DaysOff, end: int, steps: int, step_minutes: int, tz: ZoneInfo) -> bool:
    """Whether a bin of the forecast issued at ``end`` (``steps`` bins of ``step_minutes``) starts on
    a public holiday that is not a weekend: a model's calendar features know the weekday, not the
    holiday, so the forecaster serves seasonal naive then (and the trainer scores that)."""
    return off.holiday_within(end, end + (steps - 1) * 60 * step_minutes, tz)


def seasonal_naive(history: np.ndarray, steps: int, step_minutes: int, end: int | None = None,
                   tz: ZoneInfo | str | None = None, off: Callable[[date], bool] = weekend) -> np.ndarray:
    """Same local time last week; where that is missing or of the other day type, the same time on the
    latest earlier day of the target's day type (weekday or day off, local time; with ``end`` and
    ``tz``; ``off``: which local dates are days off, weekends and the site's holidays), else on the
    latest earlier day.

    ``history[-1]`` is the bin ending at the issue time ``end`` (epoch seconds). A value stays NaN
    when none is available (the caller falls back to :func:`persistence`). The day type matters: a
    Saturday copied from the Friday before (a meter's first week), or a holiday copied from the
    weekday a week before, forecasts the weekday's early morning rise, and the readings "deviate"
    from it all morning; so does the Monday after a holiday Monday, copied from the holiday.
    """
    h = np.asarray(history, dtype="float64")
    n = len(h)
    step_s = 60 * step_minutes
    week, day = WEEK_S // step_s, DAY_S // step_s
    out = np.full(steps, np.nan)
    zone = None if end is None or tz is None else (ZoneInfo(tz) if isinstance(tz, str) else tz)
    first_start = 0 if end is None else end - n * step_s  # the start of bin 0 (bin i is [end_i - step, end_i))

    def day_off(i: int) -> bool:
        return off(datetime.fromtimestamp(first_start + i * step_s, zone).date())

    def back(target: int, lag: int) -> int:
        """The bin ``lag`` bins before ``target`` at the same local wall time (:func:`wall_clock_back`)."""
        t = first_start + target * step_s
        return round((wall_clock_back(t, lag * step_s, zone) - first_start) / step_s)

    for k in range(1, steps + 1):
        target = n - 1 + k
        j = back(target, week)
        if 0 <= j < n and np.isfinite(h[j]) and (zone is None or day_off(j) == day_off(target)):
            out[k - 1] = h[j]
            continue
        if day <= 0:
            continue
        lags = range(day * max(1, math.ceil(k / day)), target + 1, day)
        found = [j for j in (back(target, lag) for lag in lags) if 0 <= j < n and np.isfinite(h[j])]
        if zone is not None:
            same = [j for j in found if day_off(j) == day_off(target)]
            found = same or found
        if found:
            out[k - 1] = h[found[0]]
    return out


@dataclass(frozen=True)
class Resolution:
    """One meter's forecast resolution: the bin width and the model window, defined in time.

    The bin is no finer than ``models.step_minutes`` nor than the meter's reading interval, and
    divides the forecast horizon (so a 15-minute meter gets 15-minute bins, an hourly one hourly bins,
    and the horizon stays what ``forecaster.horizon_minutes`` says). The model window covers
    ``models.window_steps * models.step_minutes`` minutes (at least two bins) and gaps up to
    ``models.max_gap_minutes`` are filled, whatever the bin.
    """

    step_minutes: int
    window_steps: int
    max_gap_steps: int
    horizon_steps: int


def bin_minutes(step_minutes: int, interval_s: int, horizon_minutes: int) -> int:
    """The smallest divisor of ``horizon_minutes`` no finer than ``step_minutes`` and the interval."""
    need = max(step_minutes, math.ceil(interval_s / 60))
    return next((d for d in range(need, horizon_minutes + 1) if horizon_minutes % d == 0), horizon_minutes)


def resolution(settings, meter: str) -> Resolution:
    """The :class:`Resolution` of ``meter`` (its interval: ``settings.interval_of``)."""
    m = settings.models
    horizon = settings.forecaster.horizon_minutes
    step = bin_minutes(m.step_minutes, settings.interval_of(meter), horizon)
    return Resolution(step_minutes=step, window_steps=max(2, m.window_steps * m.step_minutes // step),
                      max_gap_steps=m.max_gap_minutes // step, horizon_steps=horizon // step)


def history_steps(step_minutes: int, window_steps: int = 0) -> int:
    """Bins of history the forecaster keeps: a week plus a day (seasonal naive), or the model window."""
    return max((WEEK_S + DAY_S) // (60 * step_minutes), window_steps) + 1


# --- scores -------------------------------------------------------------------------------------
def mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y) - np.asarray(p))))


def wape(y: np.ndarray, p: np.ndarray) -> float:
    """Weighted absolute percentage error as a fraction: sum|y - p| / sum|y|."""
    denom = float(np.sum(np.abs(y)))
    return float(np.sum(np.abs(np.asarray(y) - np.asarray(p))) / denom) if denom > 0 else float("nan")
