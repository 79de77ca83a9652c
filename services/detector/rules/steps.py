"""Calibrated step thresholds (burst, pressure_drop) from a meter's own history, to an alarm budget.

A *step* is the level of a signal (median of its last ``LEVEL_N`` readings) minus its baseline (the
median of the readings of a window before them), as the burst and pressure_drop rules compute it
live. :func:`calibrate` replays that over the recent history and, per local hour of day (pooled
with the hours on either side, both day types; per day type too on a coarse meter, below), sets
each threshold so that ordinary data would have crossed it at most the rule's share of
``alarm_budget_per_30d``. The thresholds are kept per cell (hour * 2 + weekend):

- an hour with enough steps of its own (``_MIN_SAMPLES``, with its neighbours: a 1-minute meter)
  has its own tail: the same fit below on its raw steps;
- otherwise (a 15-minute or hourly meter, a short history) each hour's steps are put in its own
  units (centre = the median of the hour's own steps, at least ``_MIN_OWN_CENTRE`` of them, else of
  its neighbours' too: at an hourly interval the ordinary step of a ramp's steepest hour is not its
  neighbours'; scale = 1.4826 MAD of the steps from their own hour's centre, pooled with the
  neighbours: robust to a real event in the history; never under the median of the hours' scales)
  and the tail of all hours together in those
  units, above its 95th
  percentile ``u``, is taken as exponential (a peaks-over-threshold fit; ``beta`` = median excess /
  ln 2), and ``z`` is the value exceeded with probability ``p`` per test: ``u + beta * ln(0.05 / p)``,
  where ``p`` = the rule's budget per hour and 30 days over the number of independent tests in that
  time (one per ``LEVEL_N`` readings; one per reading on a coarse meter, ``stretched``);
- the hour's threshold is ``centre + scale * z``, never below the hour's highest step in the history
  unless that one is an outlier even of the fitted tail (so ordinary history would have raised
  nothing), nor below a floor (for the burst's pressure confirmation: the floor is a fall beyond the
  hour's centre, which on a coarse meter may be a rise);
- on a coarse meter a cell with ``_MIN_OWN_CENTRE`` steps of its own (a weekend hour after four
  weeks) also gets ``its centre + scale * z`` (at least its own highest step), and keeps the higher
  of that and its hour's: a weekend's ramp comes later and steeper than a weekday's, and at an hourly
  interval the ramp is the step (an hourly meter of a simulated district raised a false
  pressure_drop every weekend late morning, 16 in 60 days, when both day types shared one centre).

A step left out as an outlier that comes back is the district's own (a tank filling, a pump), not
a one-off event: :func:`recurring` (large steps over an hour's threshold on ``RECUR_DAYS`` days)
and :func:`over_pulses` (flow pulses, up and down again within ``PULSE_S``, on ``RECUR_DAYS`` days
at any hours) raise the thresholds over them.

Flow steps are relative to the mean flow of the last day (as the burst rule scales them), pressure
steps are in bar. Pure numpy, no pandas: the service stays small.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from zoneinfo import ZoneInfo

import numpy as np

from services.detector.rules.thresholds import local_cells
from shared.eventtime import weekend

LEVEL_N = 3  # readings in a "level" (median): one noisy reading is not a step
SHARE = 0.25  # each calibrated rule's share of the meter's alarm budget (the rest: threshold, night_flow, forecast)
CONFIRM = 10.0  # the burst's pressure confirmation may be crossed this many times more often than a step alone
MIN_DROP_BAR = 0.1  # a calibrated pressure_drop threshold is at least this (bar)
_TAIL_Q = 0.95
_MIN_SAMPLES = 200  # fewer steps than this in all: no tail is fitted, the defaults stay
_MIN_PER_HOUR = 20  # fewer steps than this in an hour (with its neighbours): that hour keeps the default
_MIN_OWN_CENTRE = 5  # an hour with this many steps of its own is centred on them (else on its neighbours' too)
RECUR_DAYS = 3  # steps over an hour's threshold on this many days are the district's own, not a one-off event
PULSE_S = (15 * 60.0, 3 * 3600.0)  # a flow that rose over its threshold and fell back this long after: a load that cycles


@dataclass
class StepCalibration:
    """Per local cell (hour * 2 + weekend, 0..47): the thresholds of one meter's step rules. ``None``
    entries: not learned. A file of an earlier version holds 24 hourly values: each serves both day types."""

    days: float = 0.0
    computed_at: float = 0.0  # epoch seconds
    flow_rel: list[float | None] = field(default_factory=lambda: [None] * 48)  # burst flow step / day mean
    burst_pressure: list[float | None] = field(default_factory=lambda: [None] * 48)  # burst confirmation (bar)
    pressure_drop: list[float | None] = field(default_factory=lambda: [None] * 48)  # pressure_drop (bar)
    forecast_pct: dict[str, float] = field(default_factory=dict)  # forecast_deviation tolerance per signal (%)
    forecast_cells: dict[str, list[float | None]] = field(default_factory=dict)  # ... and per local cell (%), where learned
    flat_run_s: dict[str, float] = field(default_factory=dict)  # per signal: its ordinary longest run (flatline.ordinary_run_s)

    def learning(self, full_days: float) -> bool:
        """Whether the history it was learned from is still short of ``full_days`` (detector.threshold_days)."""
        return self.days < full_days * 0.95

    def learned_from(self, full_days: float) -> str:
        """How the alert names its thresholds: the days learned from, and whether that is still short."""
        short = f", still learning: {self.days:.1f} of {full_days:g} days" if self.learning(full_days) else ""
        return f"learned from {self.days:.1f} days to detector.alarm_budget_per_30d{short}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepCalibration:
        def hours(v: object) -> list[float | None]:
            if not isinstance(v, list) or len(v) not in (24, 48):
                raise ValueError("a step calibration needs 48 values (hour x day type) or 24 hourly ones")
            vals = [None if x is None else float(x) for x in v]
            return vals if len(vals) == 48 else [x for x in vals for _ in (0, 1)]

        fc = d.get("forecast_pct") or {}
        if not isinstance(fc, dict):
            raise ValueError("forecast_pct must map a signal to a tolerance")
        fcells = d.get("forecast_cells") or {}
        if not isinstance(fcells, dict):
            raise ValueError("forecast_cells must map a signal to 48 tolerances")
        flat = d.get("flat_run_s") or {}
        if not isinstance(flat, dict):
            raise ValueError("flat_run_s must map a signal to seconds")
        return cls(float(d.get("days", 0.0)), float(d.get("computed_at", 0.0)), hours(d.get("flow_rel")),
                   hours(d.get("burst_pressure")), hours(d.get("pressure_drop")), {str(k): float(v) for k, v in fc.items()},
                   {str(k): hours(v) for k, v in fcells.items()}, {str(k): float(v) for k, v in flat.items()})


def cell_name(cell: int) -> str:
    """How an alert names a cell: "hour 07 (weekday)"."""
    return f"hour {cell >> 1:02d} ({'weekend or holiday' if cell & 1 else 'weekday'})"


def format_steps(site: str, meter: str, cal: StepCalibration | None) -> str:
    """The step thresholds of one meter as a table for the CLI."""
    if cal is None:
        return f"{site}/{meter} steps: not calibrated yet (detector.calibration_min_days); the fixed burst_* / pressure_drop_* defaults apply"

    def f(x: float | None, scale: float, fmt: str) -> str:
        return f"{'-':>6}" if x is None else fmt.format(x * scale)

    hourly = sorted(cal.forecast_cells)  # signals with a forecast tolerance per hour
    lines = [f"{site}/{meter} steps: learned from {cal.days:.1f} days to detector.alarm_budget_per_30d"
             + (f"; forecast tolerance {', '.join(f'{k} {v:g} %' for k, v in cal.forecast_pct.items())}" if cal.forecast_pct else ""),
             "  hour   burst flow (% of day mean)   burst pressure (bar)   pressure_drop (bar)   (weekday / weekend)"
             + (f"   forecast tolerance % ({' / '.join(hourly)}, weekday)" if hourly else "")]
    for h in range(24):
        a, b = 2 * h, 2 * h + 1
        lines.append(f"  {h:02d}     {f(cal.flow_rel[a], 100, '{:>6.1f}')} / {f(cal.flow_rel[b], 100, '{:<6.1f}')}"
                     f"      {f(cal.burst_pressure[a], 1, '{:>6.3f}')} / {f(cal.burst_pressure[b], 1, '{:<6.3f}')}"
                     f"    {f(cal.pressure_drop[a], 1, '{:>6.3f}')} / {f(cal.pressure_drop[b], 1, '{:<6.3f}')}"
                     + (f"      {' / '.join(f(cal.forecast_cells[sig][a], 1, '{:>6.1f}') for sig in hourly)}" if hourly else ""))
    if cal.flat_run_s:
        lines.append("  longest ordinary flat run: " + ", ".join(f"{k} {v / 60:g} min" for k, v in sorted(cal.flat_run_s.items()))
                     + " (a flat-line lasts detector.flatline_own_factor times this, and at least flatline_minutes)")
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


def day_mean(g: np.ndarray, interval_s: float, tau_s: float = 86_400.0) -> np.ndarray:
    """The burst rule's mean flow of the last day at each grid point, as it computes it live
    (``burst._DayMean``: exponentially weighted, time constant ``tau_s``, bias-corrected; NaN-aware;
    NaN until an hour of data). Not a trailing 24-hour mean: on a daily cycle the weighted mean swings
    by a few per cent with the time of day, and a step judged live must be scaled as in calibration."""
    n = len(g)
    out = np.full(n, np.nan)
    if n == 0:
        return out
    k = math.exp(-interval_s / tau_s)
    ok = np.isfinite(g)
    x, o = np.where(ok, g, 0.0), ok.astype(np.float64)
    block = max(1, int(20 * tau_s / interval_s))  # k**-block stays under e**20
    s = w = 0.0
    for a in range(0, n, block):
        b = min(n, a + block)
        j = np.arange(b - a, dtype=np.float64)
        up, down = k ** -j, k ** j
        # s[a + j] = k**j * (k * s[a - 1] + sum_{l <= j} x[a + l] * k**-l), the same for the weights
        sb = down * (k * s + np.cumsum(x[a:b] * up))
        wb = down * (k * w + np.cumsum(o[a:b] * up))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:b] = sb / wb
        s, w = float(sb[-1]), float(wb[-1])
    out[np.cumsum(ok) < max(1, int(round(3600 / interval_s)))] = np.nan
    return out


def _fit(s: np.ndarray) -> tuple[float, float | None]:
    """The exponential tail of ``s`` over its 95th percentile ``u``: (u, beta = median excess / ln 2),
    beta None when nothing exceeds u."""
    u = float(np.quantile(s, _TAIL_Q))
    exc = s[s > u] - u
    return u, (max(float(np.median(exc)) / math.log(2), 1e-12) if len(exc) else None)


def _exceeded(u: float, beta: float | None, p: float) -> float:
    """The value the fitted tail exceeds with probability ``p``."""
    return u if beta is None else u + beta * math.log((1 - _TAIL_Q) / max(p, 1e-12))


def _outlier(u: float, beta: float | None, n: int) -> float:
    """Beyond this, the largest of ``n`` draws is an outlier even of the fitted tail."""
    return u + (beta if beta is not None else 1e-12) * math.log((1 - _TAIL_Q) * n * 10)


def tail_threshold(s: np.ndarray, p: float) -> float | None:
    """The value exceeded with probability ``p`` by draws like ``s`` (exponential tail over the 95th
    percentile; None with fewer than ``_MIN_SAMPLES``)."""
    s = s[np.isfinite(s)]
    if len(s) < _MIN_SAMPLES:
        return None
    return _exceeded(*_fit(s), p)


def recurring(x: np.ndarray, day: np.ndarray, thr: float) -> float:
    """``thr``, or above the steps ``x`` that cross it when they do so on ``RECUR_DAYS`` or more days
    (``day``: each step's day; counted: the steps at least halfway from ``thr`` to the largest): a
    step that comes back day after day is the district's own (a tank filling, a pump, a scheduled
    load), not a one-off event that the tail may leave out, and the threshold goes over the largest
    of them by half its excess over ``thr`` (their sizes vary)."""
    over = x > thr
    if not over.any():
        return thr
    top = float(x[over].max())
    if len(np.unique(day[x > (thr + top) / 2])) < RECUR_DAYS:  # the large ones: not a burst beside two days of noise over thr
        return thr
    return top + 0.5 * (top - thr)


def over_pulses(thr: list[float | None], fitted: list[float | None], rel: np.ndarray, cell: np.ndarray, day: np.ndarray,
                interval_s: float) -> list[float | None]:
    """The burst's flow thresholds ``thr`` (per cell), raised over the meter's short pulses where they
    recur: a flow step over its hour's fitted threshold (``fitted``: before :func:`recurring`) that
    falls back (a step down of at least half of it) within ``PULSE_S`` (15 minutes to 3 hours) is a
    load switched on and off again — a storage tank
    filling, a pump — and where such pulses come on ``RECUR_DAYS`` days or more, at any hours, the
    load is the district's own: no hour's threshold stays under the largest of them (each goes over it
    by half its excess over the hour's own). A burst runs until it is repaired, hours or days: it is
    no pulse. (:func:`recurring` raises an hour over steps that recur in that hour; a tank filled once
    or twice a day comes to an hour too seldom for that, and each hour it had missed raised a burst.)"""
    t_cell = np.array([np.inf if x is None else x for x in fitted])
    over = np.nan_to_num(rel, nan=-np.inf) > t_cell[cell]
    edge = np.diff(np.concatenate(([0], over.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # each run over the threshold: [start, end)
    lo, hi = (int(round(s / interval_s)) for s in PULSE_S)
    pulses = []
    for i, j in zip(starts.tolist(), ends.tolist(), strict=True):
        peak = float(np.nanmax(rel[i:j]))
        after = rel[i + lo : i + hi + 1]
        if len(after) and np.nanmin(after, initial=np.inf) < -0.5 * peak:
            pulses.append((int(day[i]), peak))
    top = max((pk for _, pk in pulses), default=0.0)
    if len({d for d, pk in pulses if pk >= top / 2}) < RECUR_DAYS:  # pulses of the size of the largest
        return thr
    return [x if x is None or x >= top else round(top + 0.5 * (top - x), 6) for x in thr]


def per_cell(cell: np.ndarray, s: np.ndarray, p: float, floor: float, over_centre: bool = False,
             day: np.ndarray | None = None, fitted: list[float | None] | None = None) -> list[float | None]:
    """Per local cell (hour * 2 + weekend): a threshold exceeded by ordinary steps with probability ``p``.

    An hour with enough steps (with its neighbours) for a tail of its own (a 1-minute meter): that
    tail, the same for both day types. Otherwise (15-minute, hourly): the hour's centre (median of its
    steps, both day types) and scale (1.4826 MAD of the steps from their own hour's centre, pooled with
    the neighbouring hours), and one tail for all hours in those units: threshold = centre + scale *
    z, z exceeded with probability ``p``, at least the hour's largest step unless that one is an
    outlier of the tail. A cell with ``_MIN_OWN_CENTRE`` steps of its own is also judged about its own
    centre (at a coarse interval the ramp is the step, and a weekend's ramp comes later and steeper
    than a weekday's) and takes the higher of the two: never more sensitive than the hour.

    With ``day`` (each step's day), an hour's own tail is lifted over steps that recur
    (:func:`recurring`); ``fitted``, where given, receives the thresholds before that (48 values)."""
    if fitted is not None:
        fitted[:] = [None] * 48
    ok = np.isfinite(s)
    cell, s = cell[ok], s[ok]
    day = day[ok] if day is not None else None
    hour = cell >> 1
    near = [(hour == h) | (hour == (h + 1) % 24) | (hour == (h - 1) % 24) for h in range(24)]  # each hour and its neighbours
    hc, scale = np.full(24, np.nan), np.full(24, np.nan)
    for h in range(24):
        if near[h].sum() < _MIN_PER_HOUR:
            continue
        own = s[hour == h]
        # the hour's own centre where it has a few steps: at an hourly interval the neighbours' ordinary
        # steps differ (a ramp's steepest hour is steeper than the ones beside it), only their spread is pooled
        hc[h] = np.median(own) if len(own) >= _MIN_OWN_CENTRE else np.median(s[near[h]])
    for h in range(24):
        if np.isfinite(hc[h]):
            # the spread about the hours' centres, both day types: a cell's own centre moves the threshold to
            # its ramp, it does not narrow the band (a weekend cell rests on a handful of days)
            c = hc[hour[near[h]]]
            r = s[near[h]] - np.where(np.isfinite(c), c, hc[h])
            scale[h] = max(1.4826 * float(np.median(np.abs(r))), 1e-9)
    if not np.isfinite(scale).any():
        return [None] * 48
    # an hour's scale rests on few steps at a coarse interval (28 days: ~84 hourly ones with the neighbours),
    # and the threshold multiplies it by ~3: an hour whose sample came out narrow would cry wolf. Never
    # narrower than the meter's typical hour.
    scale = np.fmax(scale, float(np.nanmedian(scale)))
    known = np.isfinite(scale[hour])
    kh, kc, ks = hour[known], cell[known], s[known]
    z = (ks - hc[kh]) / scale[kh]  # in the hours' units (both day types): the tail is fitted on these
    zf = z[np.isfinite(z)]  # an hour without a centre (too few steps around it) has no z
    if len(zf) < _MIN_SAMPLES:
        return [None] * 48
    u, beta = _fit(zf)
    zt = _exceeded(u, beta, p)
    # with such hours no step counts as within the tail (their z is unknown): the tail's threshold holds
    outlier = _outlier(u, beta, len(z)) if len(zf) == len(z) else math.nan

    def above(mid: float, zs: np.ndarray, h: int) -> float:
        """mid + scale * z_t, or the largest ordinary step ``zs`` (in the same units) where higher."""
        top = float(zs.max()) if len(zs) else -math.inf
        zz = max(zt, top) if top <= outlier else zt
        # over_centre (the burst's pressure confirmation): the floor is a fall beyond the ordinary step,
        # which on a coarse meter can be a rise (pressure rising with falling demand), not beyond zero
        return float(mid + max(scale[h] * zz, floor)) if over_centre else max(float(mid + scale[h] * zz), floor)

    out: list[float | None] = [None] * 48
    for h in range(24):
        x = s[near[h]]
        if len(x) >= _MIN_SAMPLES:  # enough steps for a tail of the hour's own (1-minute meters): both day types
            u_h, b_h = _fit(x)
            own, top = _exceeded(u_h, b_h, p), float(x.max())
            thr = max(own, top) if top <= _outlier(u_h, b_h, len(x)) else own
            if fitted is not None:
                fitted[2 * h] = fitted[2 * h + 1] = round(max(thr, floor), 6)
            if day is not None:
                thr = recurring(x, day[near[h]], thr)
            out[2 * h] = out[2 * h + 1] = round(max(thr, floor), 6)
            continue
        if not np.isfinite(scale[h]):
            continue
        hour_thr = above(hc[h], z[kh == h], h)
        for c in (2 * h, 2 * h + 1):
            mine = ks[kc == c]
            thr = hour_thr
            if len(mine) >= _MIN_OWN_CENTRE:  # a ramp of its own (a weekend's): at least its own ordinary step, never under the hour's
                mid = float(np.median(mine))
                thr = max(thr, above(mid, (mine - mid) / scale[h], h))
            out[c] = round(thr, 6)
            if fitted is not None:
                fitted[c] = out[c]
    return out


def calibrate(ts: np.ndarray, flow: np.ndarray | None, pressure: np.ndarray | None, *, interval_s: float, tz: ZoneInfo,
              budget_per_30d: float, flow_base_s: float, pressure_base_s: float, at: float,
              min_burst_drop: float, off: Callable[[date], bool] = weekend) -> StepCalibration:
    """The step thresholds of one meter from its history (``ts`` epoch seconds, ascending; NaN = missing;
    ``off``: the local dates that are days off, weekends and the site's holidays)."""
    cal = StepCalibration(computed_at=at)
    if len(ts) < 2:
        return cal
    ts = np.asarray(ts, dtype=np.float64)
    grid_t = ts[0] + np.arange(int(np.rint((ts[-1] - ts[0]) / interval_s)) + 1) * interval_s
    cell = local_cells(grid_t, tz, off)  # hour * 2 + day off, local time
    day = ((grid_t - grid_t[0]) // 86_400).astype(np.int64)
    # independent tests in one local hour over 30 days: one per LEVEL_N readings at a minute, where the
    # readings' noise is correlated; one per reading on a coarse meter, whose steps a reading apart
    # are nearly independent (lag-1 correlation ~0.1 on an hourly daily cycle)
    tests_per_hour_cell = 30 * 3600 / interval_s / (1 if stretched(flow_base_s, interval_s) else LEVEL_N)
    p = budget_per_30d * SHARE / 24 / tests_per_hour_cell
    n_ok = 0
    if flow is not None and np.isfinite(flow).any():
        g = _grid(ts, np.asarray(flow, dtype=np.float64), interval_s)
        n_ok = max(n_ok, int(np.isfinite(g).sum()))
        mean = day_mean(g, interval_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = steps(g, base_readings(flow_base_s, interval_s)) / mean
        rel[~np.isfinite(mean) | (mean <= 0)] = np.nan
        fitted: list[float | None] = []
        cal.flow_rel = over_pulses(per_cell(cell, rel, p, 0.0, day=day, fitted=fitted), fitted, rel, cell, day, interval_s)
    if pressure is not None and np.isfinite(pressure).any():
        g = _grid(ts, np.asarray(pressure, dtype=np.float64), interval_s)
        n_ok = max(n_ok, int(np.isfinite(g).sum()))
        cal.pressure_drop = per_cell(cell, -steps(g, base_readings(pressure_base_s, interval_s)), p, MIN_DROP_BAR, day=day)
        cal.burst_pressure = per_cell(cell, -steps(g, base_readings(flow_base_s, interval_s)), p * CONFIRM, min_burst_drop, over_centre=True, day=day)
    cal.days = round(n_ok * interval_s / 86_400, 3)
    return cal


def base_readings(base_s: float, interval_s: float) -> int:
    """Readings in a baseline window of ``base_s`` seconds: at least 3, so it is a median of something."""
    return max(3, int(round(base_s / interval_s)))


def stretched(base_s: float, interval_s: float) -> bool:
    """Whether a baseline of ``base_s`` had to stretch to hold its three readings (a 15-minute or hourly
    meter): level and baseline are then hours apart, and the daily cycle of demand alone makes steps."""
    return base_readings(base_s, interval_s) * interval_s > base_s


def _median_of_sorted(s: list[float]) -> float:
    """``statistics.median`` of already sorted values (the same formula, so the same result)."""
    n = len(s)
    if n % 2 == 1:
        return s[n // 2]
    i = n // 2
    return (s[i - 1] + s[i]) / 2


class StepWindow:
    """The readings of a step's window (level + baseline), in time, with the baseline's values kept
    sorted as readings arrive and leave: each reading costs a binary search and a short list move
    instead of sorting the whole window (300 values at 1 s in 5 minutes). :meth:`medians` is exactly
    ``statistics.median`` of the last ``n`` values and of the ones before them: equal values keep
    their arrival order (insort after equals, remove the first equal), as a stable sort would.
    Values must not be NaN (the engine passes only readings within the range limits)."""

    __slots__ = ("base", "n", "q")

    def __init__(self, n: int = LEVEL_N) -> None:
        self.n = n
        self.q: deque[tuple[float, float]] = deque()  # (ts, value), oldest first
        self.base: list[float] = []  # the values of q[:-n], sorted

    def __len__(self) -> int:
        return len(self.q)

    def append(self, t: float, v: float) -> None:
        q = self.q
        if len(q) >= self.n:  # the oldest level reading becomes the newest baseline reading
            insort(self.base, q[-self.n][1])
        q.append((t, v))

    def evict(self, horizon: float) -> None:
        """Drop the readings at or before ``horizon``."""
        q, base = self.q, self.base
        while q and q[0][0] <= horizon:
            v = q.popleft()[1]
            if base:  # more than n readings were kept: the oldest was a baseline one
                del base[bisect_left(base, v)]

    def clear(self) -> None:
        self.q.clear()
        self.base.clear()

    def medians(self, min_base: int = 3) -> tuple[float | None, float | None]:
        """(level, baseline): the medians of the last ``n`` values and of the ones before them; (None,
        None) while fewer than ``min_base`` baseline readings are kept."""
        q, n = self.q, self.n
        if len(q) < n + min_base:
            return None, None
        level = sorted([q[-i][1] for i in range(n, 0, -1)])
        return _median_of_sorted(level), _median_of_sorted(self.base)


class DayBefore:
    """The steps of the last day, so a step can be judged against the one at the same time a day
    earlier: on a meter whose windows are stretched (:func:`stretched`), the ordinary ramp of the
    daily cycle is a step, and until the thresholds are calibrated per hour (which learns it) this is
    what tells it from a burst or a drop. O(readings per day) memory."""

    __slots__ = ("q", "tol")
    DAY = 86_400.0

    def __init__(self, interval_s: float) -> None:
        self.q: deque[tuple[float, float]] = deque()
        self.tol = interval_s / 2

    def add(self, t: float, x: float | None) -> float | None:
        """Record the step ``x`` seen at ``t`` (None: none); return the one a day earlier (within half an
        interval), or None when none was seen then."""
        q, target = self.q, t - self.DAY
        while q and q[0][0] < target - self.tol:
            q.popleft()
        prev = q[0][1] if q and q[0][0] <= target + self.tol else None
        if x is not None and math.isfinite(x):
            q.append((t, x))
        return prev
