"""Calibrated step thresholds (burst, pressure_drop) from a meter's own history, to an alarm budget.

A *step* is the level of a signal (median of its last ``LEVEL_N`` readings) minus its baseline (the
median of the readings of a window before them), as the burst and pressure_drop rules compute it
live. :func:`calibrate` replays that over the recent history and, per local hour of day (pooled
with the hours on either side, both day types), sets each threshold so that ordinary data would
have crossed it at most the rule's share of ``alarm_budget_per_30d``:

- an hour with enough steps of its own (``_MIN_SAMPLES``, with its neighbours: a 1-minute meter)
  has its own tail: the same fit below on its raw steps;
- otherwise (a 15-minute or hourly meter, a short history) each hour's steps are put in its own
  units (centre = median, scale = 1.4826 MAD: robust to a real event in the history) and the
  tail of all hours together in those units, above its 95th
  percentile ``u``, is taken as exponential (a peaks-over-threshold fit; ``beta`` = median excess /
  ln 2), and ``z`` is the value exceeded with probability ``p`` per test: ``u + beta * ln(0.05 / p)``,
  where ``p`` = the rule's budget per hour and 30 days over the number of independent tests in that
  time (one per ``LEVEL_N`` readings);
- the hour's threshold is ``centre + scale * z``, never below the hour's highest step in the history
  unless that one is an outlier even of the fitted tail (so ordinary history would have raised
  nothing), nor below a floor.

Flow steps are relative to the mean flow of the last day (as the burst rule scales them), pressure
steps are in bar. Pure numpy, no pandas: the service stays small.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from zoneinfo import ZoneInfo

import numpy as np

LEVEL_N = 3  # readings in a "level" (median): one noisy reading is not a step
SHARE = 0.25  # each calibrated rule's share of the meter's alarm budget (the rest: threshold, night_flow, forecast)
CONFIRM = 10.0  # the burst's pressure confirmation may be crossed this many times more often than a step alone
MIN_DROP_BAR = 0.1  # a calibrated pressure_drop threshold is at least this (bar)
_TAIL_Q = 0.95
_MIN_SAMPLES = 200  # fewer steps than this in all: no tail is fitted, the defaults stay
_MIN_PER_HOUR = 20  # fewer steps than this in an hour (with its neighbours): that hour keeps the default


@dataclass
class StepCalibration:
    """Per local hour (0..23): the thresholds of one meter's step rules. ``None`` entries: not learned."""

    days: float = 0.0
    computed_at: float = 0.0  # epoch seconds
    flow_rel: list[float | None] = field(default_factory=lambda: [None] * 24)  # burst flow step / day mean
    burst_pressure: list[float | None] = field(default_factory=lambda: [None] * 24)  # burst confirmation (bar)
    pressure_drop: list[float | None] = field(default_factory=lambda: [None] * 24)  # pressure_drop (bar)
    forecast_pct: dict[str, float] = field(default_factory=dict)  # forecast_deviation tolerance per signal (%)

    def learned_from(self, full_days: float) -> str:
        """How the alert names its thresholds: the days learned from, and whether that is still short."""
        short = f", still learning: {self.days:.1f} of {full_days:g} days" if self.days < full_days * 0.95 else ""
        return f"learned from {self.days:.1f} days to detector.alarm_budget_per_30d{short}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepCalibration:
        def hours(v: object) -> list[float | None]:
            if not isinstance(v, list) or len(v) != 24:
                raise ValueError("a step calibration needs 24 hourly values")
            return [None if x is None else float(x) for x in v]

        fc = d.get("forecast_pct") or {}
        if not isinstance(fc, dict):
            raise ValueError("forecast_pct must map a signal to a tolerance")
        return cls(float(d.get("days", 0.0)), float(d.get("computed_at", 0.0)), hours(d.get("flow_rel")),
                   hours(d.get("burst_pressure")), hours(d.get("pressure_drop")), {str(k): float(v) for k, v in fc.items()})


def format_steps(site: str, meter: str, cal: StepCalibration | None) -> str:
    """The step thresholds of one meter as a table for the CLI."""
    if cal is None:
        return f"{site}/{meter} steps: not calibrated yet (detector.calibration_min_days); the fixed burst_* / pressure_drop_* defaults apply"

    def f(x: float | None, scale: float = 1.0, fmt: str = "{:>8.3f}") -> str:
        return f"{'-':>8}" if x is None else fmt.format(x * scale)

    lines = [f"{site}/{meter} steps: learned from {cal.days:.1f} days to detector.alarm_budget_per_30d"
             + (f"; forecast tolerance {', '.join(f'{k} {v:g} %' for k, v in cal.forecast_pct.items())}" if cal.forecast_pct else ""),
             "  hour   burst flow (% of day mean)   burst pressure (bar)   pressure_drop (bar)"]
    for h in range(24):
        lines.append(f"  {h:02d}     {f(cal.flow_rel[h], 100, '{:>8.1f}')}                     {f(cal.burst_pressure[h])}"
                     f"               {f(cal.pressure_drop[h])}")
    return "\n".join(lines)


def _grid(ts: np.ndarray, x: np.ndarray, interval_s: float) -> np.ndarray:
    """Values on a regular grid of ``interval_s`` from the first timestamp (NaN where none arrived)."""
    idx = np.rint((ts - ts[0]) / interval_s).astype(np.int64)
    g = np.full(int(idx[-1]) + 1, np.nan)
    g[idx] = x
    return g


def _rolling_nanmedian(g: np.ndarray, n: int) -> np.ndarray:
    """Median of ``g[i-n+1 .. i]`` at each i (NaN until n values; NaN-aware)."""
    out = np.full(len(g), np.nan)
    if len(g) < n:
        return out
    import warnings

    w = np.lib.stride_tricks.sliding_window_view(g, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN
        out[n - 1:] = np.nanmedian(w, axis=1)
    return out


def steps(g: np.ndarray, base_n: int) -> np.ndarray:
    """level - baseline at each grid point (level: median of the last LEVEL_N, baseline: of the base_n before)."""
    level = _rolling_nanmedian(g, LEVEL_N)
    base = np.full(len(g), np.nan)
    b = _rolling_nanmedian(g, base_n)
    base[LEVEL_N:] = b[:-LEVEL_N] if len(g) > LEVEL_N else base[LEVEL_N:]
    return level - base


def day_mean(g: np.ndarray, interval_s: float) -> np.ndarray:
    """Trailing mean of the last 24 h at each grid point (NaN-aware; NaN until an hour of data)."""
    n = max(1, int(round(86_400 / interval_s)))
    ok = np.isfinite(g)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, g, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(1, len(g) + 1)
    j = np.maximum(i - n, 0)
    cnt = cn[i] - cn[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (cs[i] - cs[j]) / cnt
    m[cnt < max(1, n // 24)] = np.nan
    return m


def tail_threshold(s: np.ndarray, p: float) -> float | None:
    """The value exceeded with probability ``p`` by draws like ``s`` (exponential tail over the 95th
    percentile; None with fewer than ``_MIN_SAMPLES``)."""
    s = s[np.isfinite(s)]
    if len(s) < _MIN_SAMPLES:
        return None
    u = float(np.quantile(s, _TAIL_Q))
    exc = s[s > u] - u
    if len(exc) == 0:
        return u
    beta = max(float(np.median(exc)) / math.log(2), 1e-12)
    return u + beta * math.log((1 - _TAIL_Q) / max(p, 1e-12))


def _per_hour(hour: np.ndarray, s: np.ndarray, p: float, floor: float) -> list[float | None]:
    """Per local hour: the hour's own centre and scale (median, 1.4826 MAD of its steps, pooled with the
    neighbouring hours), and one tail for all hours in those units (so an hourly or 15-minute meter, with
    few steps per hour, still has a tail to fit): threshold = centre + scale * z, where z is exceeded
    with probability ``p``; at least the hour's largest step unless that one is an outlier of the tail."""
    ok = np.isfinite(s)
    hour, s = hour[ok], s[ok]
    centre, scale = np.full(24, np.nan), np.full(24, np.nan)
    for h in range(24):
        x = s[(hour == h) | (hour == (h + 1) % 24) | (hour == (h - 1) % 24)]  # the hour and its neighbours
        if len(x) >= _MIN_PER_HOUR:
            centre[h] = np.median(x)
            scale[h] = max(1.4826 * float(np.median(np.abs(x - centre[h]))), 1e-9)
    if not np.isfinite(scale).any():
        return [None] * 24
    known = np.isfinite(scale[hour])
    z = (s[known] - centre[hour[known]]) / scale[hour[known]]
    zt = tail_threshold(z, p)
    if zt is None:
        return [None] * 24
    u = float(np.quantile(z, _TAIL_Q))
    beta = max(float(np.median(z[z > u] - u)) / math.log(2), 1e-12) if (z > u).any() else 1e-12
    outlier = u + beta * math.log((1 - _TAIL_Q) * len(z) * 10)
    out: list[float | None] = []
    for h in range(24):
        x = s[(hour == h) | (hour == (h + 1) % 24) | (hour == (h - 1) % 24)]
        own = tail_threshold(x, p)
        if own is not None:  # enough steps for a tail of the hour's own (1-minute meters)
            u_h = float(np.quantile(x, _TAIL_Q))
            b_h = max(float(np.median(x[x > u_h] - u_h)) / math.log(2), 1e-12) if (x > u_h).any() else 1e-12
            top = float(x.max())
            thr = max(own, top) if top <= u_h + b_h * math.log((1 - _TAIL_Q) * len(x) * 10) else own
            out.append(round(max(thr, floor), 6))
            continue
        if not np.isfinite(scale[h]):
            out.append(None)
            continue
        zh = z[hour[known] == h]
        top = float(zh.max()) if len(zh) else -math.inf
        zz = max(zt, top) if top <= outlier else zt
        out.append(round(max(float(centre[h] + scale[h] * zz), floor), 6))
    return out


def local_hours(ts: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """Local hour of each epoch second (zone offsets are multiples of 15 minutes)."""
    from datetime import datetime

    keys, inv = np.unique(ts.astype(np.int64) // 900, return_inverse=True)
    hrs = np.array([datetime.fromtimestamp(int(k) * 900, tz).hour for k in keys.tolist()], dtype=np.int64)
    return hrs[inv]


def calibrate(ts: np.ndarray, flow: np.ndarray | None, pressure: np.ndarray | None, *, interval_s: float, tz: ZoneInfo,
              budget_per_30d: float, flow_base_s: float, pressure_base_s: float, at: float,
              min_burst_drop: float) -> StepCalibration:
    """The step thresholds of one meter from its history (``ts`` epoch seconds, ascending; NaN = missing)."""
    cal = StepCalibration(computed_at=at)
    if len(ts) < 2:
        return cal
    ts = np.asarray(ts, dtype=np.float64)
    grid_t = ts[0] + np.arange(int(np.rint((ts[-1] - ts[0]) / interval_s)) + 1) * interval_s
    hour = local_hours(grid_t, tz)
    tests_per_hour_cell = 30 * 3600 / interval_s / LEVEL_N  # independent tests in one local hour over 30 days
    p = budget_per_30d * SHARE / 24 / tests_per_hour_cell
    n_ok = 0
    if flow is not None and np.isfinite(flow).any():
        g = _grid(ts, np.asarray(flow, dtype=np.float64), interval_s)
        n_ok = max(n_ok, int(np.isfinite(g).sum()))
        mean = day_mean(g, interval_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = steps(g, base_readings(flow_base_s, interval_s)) / mean
        rel[~np.isfinite(mean) | (mean <= 0)] = np.nan
        cal.flow_rel = _per_hour(hour, rel, p, 0.0)
    if pressure is not None and np.isfinite(pressure).any():
        g = _grid(ts, np.asarray(pressure, dtype=np.float64), interval_s)
        n_ok = max(n_ok, int(np.isfinite(g).sum()))
        cal.pressure_drop = _per_hour(hour, -steps(g, base_readings(pressure_base_s, interval_s)), p, MIN_DROP_BAR)
        cal.burst_pressure = _per_hour(hour, -steps(g, base_readings(flow_base_s, interval_s)), p * CONFIRM, min_burst_drop)
    cal.days = round(n_ok * interval_s / 86_400, 3)
    return cal


def base_readings(base_s: float, interval_s: float) -> int:
    """Readings in a baseline window of ``base_s`` seconds: at least 3, so it is a median of something."""
    return max(3, int(round(base_s / interval_s)))
