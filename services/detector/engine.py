"""The detector's decision logic: readings in, alert events out. No I/O, no wall clock.

``DetectionEngine.process(reading)`` returns the :class:`~shared.messages.Anomaly` updates (an
"open" event when an alert starts, a "closed" one when it ends; gaps and spikes come as one closed
event) that this reading caused. State is kept per (site, meter) in O(1)-amortised structures
(deques, a sorted window), so a year of minute data runs through in seconds (``flowwatch evaluate``).

Rules, per signal, in event time (parameters: ``DetectorSettings``):

- invalid: missing / NaN, negative flow, outside the physical range (``limits``);
- flatline: a signal that does not move for ``flatline_minutes``;
- spike: an isolated reading far from the rolling median (robust z-score on median/MAD), confirmed
  by the next reading coming back (two outliers in a row are a level change, not a spike);
- gap: a step between readings longer than ``gap_factor`` intervals;
- silent: no reading for ``silent_intervals`` (wall clock: the caller passes ``now`` to
  :meth:`check_silent`; the only rule that looks at a clock);
- threshold: outside the band of the hour of day and day type; bands are learned (see
  thresholds.py) when ``recalibrate_period`` is crossed in event time (daily while only static
  limits exist) — the engine flags the meter in :meth:`take_due` and the caller, who owns the
  data, calls :meth:`recalibrate` with the recent readings;
- pressure_loss: pressure under ``pressure_loss_bar`` (critical);
- night_flow: the minimum night flow rising over its baseline (nightflow.py);
- burst: a flow jump and a pressure drop within ``burst_window_minutes`` (critical);
- forecast_deviation: sustained distance from the latest forecast (:meth:`on_forecast`).

Readings at or before the last one seen for a meter (a redelivery, a replay) change nothing.
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from services.detector.alerts import AlertState, Transition
from services.detector.rules.nightflow import NightAccumulator, NightLeakRule, parse_hhmm
from services.detector.rules.thresholds import BandTable, learn_thresholds, static_thresholds
from shared.eventtime import floor
from shared.messages import SIGNALS, Anomaly, Forecast, Reading, Thresholds
from shared.settings import DetectorSettings, RangeLimits, Settings
from shared.store.base import NightFlow

if TYPE_CHECKING:  # frames are accepted (flowwatch evaluate) but pandas is never imported here
    import pandas as pd

logger = logging.getLogger(__name__)

SEVERITY = {
    "invalid": "warning", "flatline": "warning", "spike": "info", "gap": "info", "silent": "warning",
    "threshold": "warning", "night_flow": "warning", "burst": "critical", "pressure_loss": "critical",
    "forecast_deviation": "warning",
}
_STEP = {"day": timedelta(hours=36), "week": timedelta(days=8), "month": timedelta(days=40),
         "quarter": timedelta(days=100), "year": timedelta(days=400)}
MAD_SCALE = 1.4826
_TAINTING = ("burst", "pressure_loss")  # a forecast issued while one is open is not used for deviation
BURST_LEVEL_N = 3  # readings in the burst rule's "level" (median): one noisy reading is not a step
Key = tuple[str, str]


def next_boundary(t: float, period: str, tz: ZoneInfo) -> float:
    """The first boundary of ``period`` strictly after epoch ``t`` (local time ``tz``)."""
    b = floor(datetime.fromtimestamp(t, UTC), period, tz)
    return floor(b + _STEP[period], period, tz).timestamp()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _mad(s: list[float], med: float) -> float:
    """Median absolute deviation of sorted ``s`` around its median element ``med`` (two-pointer merge)."""
    n = len(s)
    m = n // 2
    i, j, dev = m - 1, m + 1, 0.0
    for _ in range(n // 2):
        left = med - s[i] if i >= 0 else math.inf
        right = s[j] - med if j < n else math.inf
        if left <= right:
            dev, i = left, i - 1
        else:
            dev, j = right, j + 1
    return dev


class _Signal:
    __slots__ = ("base", "fifo", "flat_ref", "flat_since", "pending", "sorted")

    def __init__(self) -> None:
        self.fifo: deque[float] = deque()
        self.sorted: list[float] = []
        self.flat_since: float | None = None
        self.flat_ref = 0.0
        self.pending: tuple[float, float, float, float] | None = None  # (ts, value, median, limit)
        self.base: deque[tuple[float, float]] = deque()  # burst level + baseline readings (ts, value)


class _DayMean:
    """Exponentially weighted mean over about a day (time constant 24 h), bias-corrected: the plain
    mean of what has been seen while less than a day has. O(1) memory."""

    __slots__ = ("s", "t", "w")
    TAU = 86_400.0

    def __init__(self) -> None:
        self.s = self.w = 0.0
        self.t: float | None = None

    def add(self, t: float, x: float) -> None:
        if self.t is not None:
            k = math.exp(-(t - self.t) / self.TAU)
            self.s, self.w = self.s * k, self.w * k
        self.s, self.w, self.t = self.s + x, self.w + 1.0, t

    @property
    def value(self) -> float | None:
        return self.s / self.w if self.w else None


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _level_and_base(q: deque[tuple[float, float]], n: int) -> tuple[float | None, float | None]:
    """(median of the last ``n`` values, median of the ones before them) of a burst deque."""
    if len(q) < n + 3:
        return None, None
    vals = [v for _, v in q]
    return statistics.median(vals[-n:]), statistics.median(vals[:-n])


class _Meter:
    __slots__ = (
        "alerts",
        "bands",
        "forecasts",
        "flow_mean",
        "frozen",
        "last",
        "last_drop",
        "last_jump",
        "leak",
        "meter",
        "next_day",
        "next_recal",
        "night",
        "sig",
        "site",
    )

    def __init__(self, site: str, meter: str) -> None:
        self.site, self.meter = site, meter
        self.last: float | None = None
        self.sig = {s: _Signal() for s in SIGNALS}
        self.alerts: dict[tuple[str, str], AlertState] = {}
        self.night: NightAccumulator | None = None
        self.leak: NightLeakRule | None = None
        self.bands: dict[str, BandTable] = {}
        self.forecasts: dict[str, tuple[float, list[float], list[float]]] = {}
        self.next_recal = math.inf
        self.next_day = math.inf
        self.last_jump: float | None = None
        self.last_drop: float | None = None
        self.frozen: tuple[float | None, float | None, float | None] = (None, None, None)
        self.flow_mean = _DayMean()


class DetectionEngine:
    """Per-meter detection state and rules. Thread-unsafe by design: one caller thread."""

    def __init__(self, cfg: DetectorSettings, tz: ZoneInfo | str = "Asia/Seoul", *,
                 limits: RangeLimits | None = None, interval_s: float = 60.0) -> None:
        self.cfg = cfg
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.limits = limits or RangeLimits()
        self.interval = float(cfg.interval_s or interval_s)
        self._ranges = {
            "flow_rate": (self.limits.flow_rate_min, self.limits.flow_rate_max, "limits.flow_rate_min/max"),
            "pressure": (self.limits.pressure_min, self.limits.pressure_max, "limits.pressure_min/max"),
        }
        self._night_start, self._night_end = parse_hhmm(cfg.night_start), parse_hhmm(cfg.night_end)
        self._meters: dict[Key, _Meter] = {}
        self._cells: dict[int, int] = {}
        self._due: dict[Key, float] = {}
        self._night_out: list[NightFlow] = []
        self._replay = False
        self.late_readings = 0
        # precomputed parameters (seconds)
        self._min_s = cfg.min_duration_minutes * 60
        self._clear_s = cfg.clear_after_minutes * 60
        self._gap_s = cfg.gap_factor * self.interval
        self._flat_s = cfg.flatline_minutes * 60
        self._spike_min_n = max(5, cfg.spike_window // 2 + 1)
        self._burst_base_s = cfg.burst_baseline_minutes * 60
        self._burst_win_s = cfg.burst_window_minutes * 60
        self._fc_sustain_s = cfg.forecast_sustain_minutes * 60

    @classmethod
    def from_settings(cls, settings: Settings) -> DetectionEngine:
        return cls(settings.detector, settings.tz, limits=settings.limits, interval_s=settings.collector.interval_s)

    # --- meters and alerts ------------------------------------------------------------------
    def last_time(self, site: str, meter: str) -> datetime | None:
        m = self._meters.get((site, meter))
        return _dt(m.last) if m is not None and m.last is not None else None

    def _meter(self, site: str, meter: str) -> _Meter:
        m = self._meters.get((site, meter))
        if m is None:
            m = self._meters[(site, meter)] = _Meter(site, meter)
            m.night = NightAccumulator(self._night_start, self._night_end, self.tz)
            m.leak = NightLeakRule(self.cfg)
            now = datetime.now(UTC)
            for s in SIGNALS:
                m.bands[s] = BandTable(static_thresholds(site, meter, s, self.cfg, now))
                m.bands[s].computed_at = datetime.min.replace(tzinfo=UTC)
        return m

    def _alert(self, m: _Meter, kind: str, signal: str) -> AlertState:
        a = m.alerts.get((kind, signal))
        if a is None:
            if kind in ("threshold",):
                mn, cl = self._min_s, self._clear_s
            elif kind == "forecast_deviation":
                mn, cl = self._fc_sustain_s, self._clear_s
            elif kind in ("flatline", "night_flow", "silent"):
                mn, cl = 0.0, 0.0
            else:  # invalid, burst, pressure_loss: open at once, close after the clear time
                mn, cl = 0.0, self._clear_s
            a = m.alerts[(kind, signal)] = AlertState(kind, signal, SEVERITY[kind], mn, cl, self.interval)
        return a

    def _emit(self, m: _Meter, a: AlertState, tr: Transition | None, out: list[Anomaly]) -> None:
        if tr is None or self._replay:
            return
        out.append(Anomaly(
            site=m.site, meter=m.meter, kind=a.kind, signal=a.signal, severity=a.severity, state=tr.state,
            start=_dt(tr.start), end=_dt(tr.end) if tr.end is not None else None, ts=_dt(tr.ts),
            value=tr.value, threshold=tr.threshold, message=tr.message[:500],
        ))

    def _one_shot(self, m: _Meter, kind: str, signal: str, start: float, end: float, value: float | None,
                  threshold: float | None, message: str, out: list[Anomaly]) -> None:
        if self._replay:
            return
        out.append(Anomaly(
            site=m.site, meter=m.meter, kind=kind, signal=signal, severity=SEVERITY[kind], state="closed",
            start=_dt(start), end=_dt(end), ts=_dt(end), value=value, threshold=threshold, message=message[:500],
        ))

    def _cell(self, t: float) -> int:
        k = int(t) // 900  # every zone offset is a multiple of 15 minutes
        c = self._cells.get(k)
        if c is None:
            if len(self._cells) > 100_000:
                self._cells.clear()
            lt = datetime.fromtimestamp(k * 900, self.tz)
            c = self._cells[k] = lt.hour * 2 + (lt.weekday() >= 5)
        return c

    # --- the per-reading path ---------------------------------------------------------------
    def process(self, reading: Reading) -> list[Anomaly]:
        return self.process_values(reading.site, reading.meter, reading.ts.timestamp(), reading.flow_rate, reading.pressure)

    def process_values(self, site: str, meter: str, t: float, flow: float | None, pressure: float | None) -> list[Anomaly]:
        """One reading as plain values (epoch seconds; None or NaN for missing)."""
        out: list[Anomaly] = []
        m = self._meters.get((site, meter)) or self._meter(site, meter)
        last = m.last
        if last is not None and t <= last:
            self.late_readings += 1
            return out
        a = m.alerts.get(("silent", "both"))
        if a is not None and a.is_open:
            self._emit(m, a, a.force_close(t), out)
        if last is None:
            m.next_recal = next_boundary(t, self.cfg.recalibrate_period, self.tz)
            m.next_day = next_boundary(t, "day", self.tz)
        else:
            if t - last > self._gap_s:
                self._one_shot(m, "gap", "both", last, t, round((t - last) / 60, 3), round(self._gap_s / 60, 3),
                               f"no reading for {(t - last) / 60:.1f} min (expected every {self.interval / 60:g} min; "
                               f"detector.gap_factor={self.cfg.gap_factor:g})", out)
            if t >= m.next_recal:
                self._due[(site, meter)] = floor(_dt(t), self.cfg.recalibrate_period, self.tz).timestamp()
                m.next_recal = next_boundary(t, self.cfg.recalibrate_period, self.tz)
            if t >= m.next_day:
                if any(b.method == "static" for b in m.bands.values()):
                    self._due[(site, meter)] = floor(_dt(t), "day", self.tz).timestamp()
                m.next_day = next_boundary(t, "day", self.tz)
        m.last = t

        f = self._valid(m, "flow_rate", flow, t, out)
        p = self._valid(m, "pressure", pressure, t, out)

        done = m.night.add(t, f, self.interval, self.cfg.night_min_coverage)
        if done is not None:
            self._night_done(m, *done, out)

        cell = self._cell(t)
        if f is not None:
            self._signal_rules(m, "flow_rate", f, t, cell, out)
        if p is not None:
            self._signal_rules(m, "pressure", p, t, cell, out)
            a = self._alert(m, "pressure_loss", "pressure")
            lim = self.cfg.pressure_loss_bar
            if p < lim or a.is_open:
                self._emit(m, a, a.update(t, p < lim, p, lim, f"pressure {p:.3f} bar below {lim:g} bar (detector.pressure_loss_bar)"), out)
        self._burst(m, f, p, t, out)
        return out

    def _valid(self, m: _Meter, sig: str, x: float | None, t: float, out: list[Anomaly]) -> float | None:
        lo, hi, name = self._ranges[sig]
        if x is not None and lo <= x <= hi:  # NaN fails the range test
            a = m.alerts.get(("invalid", sig))
            if a is not None and (a.is_open or a.first_true is not None):
                self._emit(m, a, a.update(t, False), out)
            return x
        if x is None or math.isnan(x):
            val, thr, msg = None, None, f"{sig} is missing"
        elif sig == "flow_rate" and x < 0:
            val, thr, msg = x, 0.0, f"negative flow {x:.3f} m³/h"
        else:
            val, thr = x, (lo if x < lo else hi)
            msg = f"{sig} {x:.3f} outside the physical range [{lo:g}, {hi:g}] ({name})"
        a = self._alert(m, "invalid", sig)
        self._emit(m, a, a.update(t, True, val, thr, msg), out)
        return None

    def _signal_rules(self, m: _Meter, sig: str, x: float, t: float, cell: int, out: list[Anomaly]) -> None:
        cfg = self.cfg
        s = m.sig[sig]
        # flat-line
        if s.flat_since is None or abs(x - s.flat_ref) > cfg.flatline_tolerance:
            s.flat_since, s.flat_ref = t, x
        flat = t - s.flat_since + self.interval >= self._flat_s
        a = m.alerts.get(("flatline", sig))
        if flat or (a is not None and a.is_open):
            a = a or self._alert(m, "flatline", sig)
            self._emit(m, a, a.update(t, flat, x, None, f"{sig} unchanged at {x:.3f} for {cfg.flatline_minutes:g} min or more"), out)
        # spike (isolated outlier, confirmed by the next reading)
        w = s.sorted
        n = len(w)
        outlier = False
        med = lim = 0.0
        if n >= self._spike_min_n:
            med = w[n // 2]
            lim = max(cfg.spike_z * MAD_SCALE * _mad(w, med), cfg.spike_min_abs.get(sig, 0.0))
            outlier = abs(x - med) > lim
        pend = s.pending
        if pend is not None:
            pt, pv, pmed, plim = pend
            s.pending = None
            if abs(x - pmed) <= plim and abs(x - pv) > plim:  # came back: the outlier stood alone
                self._one_shot(m, "spike", sig, pt, t, pv, pmed + (plim if pv > pmed else -plim),
                               f"{sig} spike {pv:.3f} against a rolling median of {pmed:.3f} (detector.spike_z={cfg.spike_z:g})", out)
        elif outlier and s.fifo and abs(x - s.fifo[-1]) > lim:  # a jump from the previous reading, not a drift
            s.pending = (t, x, med, lim)
        s.fifo.append(x)
        bisect.insort(w, x)
        if n + 1 > cfg.spike_window:
            old = s.fifo.popleft()
            del w[bisect.bisect_left(w, old)]
        # threshold bands
        bt = m.bands[sig]
        lo, hi = bt.lower[cell], bt.upper[cell]
        a = m.alerts.get(("threshold", sig))
        is_open = a is not None and a.is_open
        if is_open:
            h = (hi - lo) * cfg.hysteresis_pct / 100.0 if hi - lo < math.inf else 0.0
            upper_breach = a.value is None or lo == -math.inf or a.value > (lo + hi) / 2
            active = x > hi - h if upper_breach else x < lo + h  # re-enter the band by a margin on the breached side
        else:
            active = x > hi or x < lo
        if active or (a is not None and (is_open or a.first_true is not None)):
            a = a or self._alert(m, "threshold", sig)
            thr = hi if x > (lo + hi) / 2 or lo == -math.inf else lo
            msg = ""
            if active and not is_open:
                side = "above the upper" if thr == hi else "below the lower"
                hour, wk = divmod(cell, 2)
                if bt.method == "static":
                    how = (f"static limits (detector.static_limits): only {bt.sample_days:.1f} of "
                           f"{cfg.threshold_min_days:g} days of data, bands not learned yet")
                else:
                    how = f"learned from {bt.sample_days:.1f} days"
                msg = f"{sig} {x:.3f} {side} band {thr:.3f} (hour {hour:02d} {'weekend' if wk else 'weekday'}; {how})"
            self._emit(m, a, a.update(t, active, x, thr, msg), out)
        # forecast deviation
        fc = m.forecasts.get(sig)
        if fc is not None:
            issued, targets, values = fc
            if issued < t <= targets[-1]:
                j = bisect.bisect_left(targets, t)
                if j == 0:
                    fv = values[0]
                else:
                    t0, t1 = targets[j - 1], targets[j]
                    fv = values[j - 1] + (values[j] - values[j - 1]) * (t - t0) / (t1 - t0)
                tol = max(abs(fv) * cfg.forecast_tolerance_pct / 100.0, cfg.forecast_tolerance_abs.get(sig, 0.0))
                dev = abs(x - fv) > tol
                a = m.alerts.get(("forecast_deviation", sig))
                if dev or (a is not None and (a.is_open or a.first_true is not None)):
                    a = a or self._alert(m, "forecast_deviation", sig)
                    self._emit(m, a, a.update(t, dev, x, fv, f"{sig} {x:.3f} vs forecast {fv:.3f} (tolerance {tol:.3f}) "
                                                               f"for {cfg.forecast_sustain_minutes:g} min or more"), out)

    def _burst(self, m: _Meter, f: float | None, p: float | None, t: float, out: list[Anomaly]) -> None:
        """A flow step up together with a pressure step down, within ``burst_window_minutes``.

        A step compares the *level* (median of the last ``BURST_LEVEL_N`` readings: one noisy
        reading is not a step) with the *baseline* (median of the ``burst_baseline_minutes`` before
        them). The flow step is scaled by the mean flow of the last day, so a burst of a given size
        counts the same at the morning peak as at night; a slow diurnal ramp moves level and baseline
        together and is not a step. While a burst is open the baselines are frozen."""
        cfg = self.cfg
        fq, pq = m.sig["flow_rate"].base, m.sig["pressure"].base
        if f is not None:
            fq.append((t, f))
            m.flow_mean.add(t, f)
        if p is not None:
            pq.append((t, p))
        horizon = t - self._burst_base_s - BURST_LEVEL_N * self.interval
        while fq and fq[0][0] <= horizon:
            fq.popleft()
        while pq and pq[0][0] <= horizon:
            pq.popleft()
        lf, bf = _level_and_base(fq, BURST_LEVEL_N) if f is not None else (None, None)
        lp, bp = _level_and_base(pq, BURST_LEVEL_N) if p is not None else (None, None)
        a = m.alerts.get(("burst", "both"))
        is_open = a is not None and a.is_open
        if is_open:
            bf, bp, ref = m.frozen
        else:
            ref = m.flow_mean.value
        jump_thr = None if bf is None or ref is None else bf + max(abs(ref) * cfg.burst_flow_jump_pct / 100.0, cfg.burst_flow_jump_abs)
        jump = lf is not None and jump_thr is not None and lf > jump_thr
        drop = lp is not None and bp is not None and bp - lp > cfg.burst_pressure_drop
        if jump:
            m.last_jump = t
        if drop:
            m.last_drop = t
        if is_open:
            active = jump or drop
        else:
            w = self._burst_win_s
            active = (jump and m.last_drop is not None and t - m.last_drop <= w) or (
                drop and m.last_jump is not None and t - m.last_jump <= w)
        if active or is_open or (a is not None and a.first_true is not None):
            a = a or self._alert(m, "burst", "both")
            msg = ""
            if active and not is_open:
                msg = (f"burst suspected: flow {_num(lf)} m³/h over the baseline {_num(bf)} "
                       f"(step > {cfg.burst_flow_jump_pct:g} % of the day's mean flow {_num(ref)}) and pressure "
                       f"{_num(lp)} bar under the baseline {_num(bp)} (step > {cfg.burst_pressure_drop:g} bar) "
                       f"within {cfg.burst_window_minutes:g} min")
            tr = a.update(t, active, lf, jump_thr, msg)
            if tr is not None and tr.state == "open":
                m.frozen = (bf, bp, ref)
            self._emit(m, a, tr, out)

    def _night_done(self, m: _Meter, day, ws: float, minimum: float, out: list[Anomaly]) -> None:
        if not self._replay:
            self._night_out.append(NightFlow(m.site, m.meter, day, _dt(ws), float(minimum)))
        self._judge_night(m, day, ws, minimum, out)

    def _judge_night(self, m: _Meter, day, ws: float, value: float, out: list[Anomaly]) -> None:
        judged = m.leak.judge(day, ws, value)
        if judged is None:
            return
        z, base, sigma = judged
        if base is None:
            return
        cfg = self.cfg
        a = self._alert(m, "night_flow", "flow_rate")
        lim = cfg.night_cusum_limit
        active = m.leak.alarm(z, a.is_open)
        msg = ""
        if active and not a.is_open:
            why = (f"one night {z:.1f} sigma above it (detector.night_single_z)" if z > cfg.night_single_z
                   else f"the excess over recent nights adds up to {m.leak.cusum:.1f} sigma (detector.night_cusum_limit={lim:g})")
            msg = (f"leak suspected: minimum night flow {value:.3f} m³/h against a baseline of {base:.3f} "
                   f"(median of earlier nights, sigma {sigma:.3f}): {why}")
        self._emit(m, a, a.update(ws, active, value, base + lim * sigma, msg), out)

    # --- wall-clock liveness ----------------------------------------------------------------
    def check_silent(self, now: datetime, last_seen: dict[Key, float]) -> list[Anomaly]:
        """Open 'silent' for meters whose last reading *arrived* (wall epoch) too long before ``now``."""
        out: list[Anomaly] = []
        limit = self.cfg.silent_intervals * self.interval
        nowt = now.timestamp()
        for key, seen in last_seen.items():
            m = self._meters.get(key)
            if m is None or m.last is None:
                continue
            a = self._alert(m, "silent", "both")
            if nowt - seen > limit and not a.is_open:
                self._emit(m, a, a.update(m.last, True, round(nowt - seen, 3), limit,
                                          f"no reading for {nowt - seen:.0f} s (wall clock; detector.silent_intervals="
                                          f"{self.cfg.silent_intervals:g} x {self.interval:g} s)"), out)
        return out

    # --- forecasts, thresholds, night flow output -------------------------------------------
    def on_forecast(self, fc: Forecast) -> None:
        m = self._meter(fc.site, fc.meter)
        cur = m.forecasts.get(fc.signal)
        issued = fc.issued_at.timestamp()
        if cur is not None and cur[0] > issued:
            return
        if any(a.is_open for (kind, _), a in m.alerts.items() if kind in _TAINTING):
            # made from readings of a burst / pressure loss: it would flag the recovery as a deviation
            m.forecasts.pop(fc.signal, None)
            return
        m.forecasts[fc.signal] = (issued, [d.timestamp() for d in fc.targets()], [float(v) for v in fc.values])

    def set_thresholds(self, th: Thresholds) -> bool:
        """Install bands (from the store, a recalibration, a retained message); older ones are ignored."""
        m = self._meter(th.site, th.meter)
        cur = m.bands.get(th.signal)
        if cur is not None and cur.computed_at > th.computed_at:
            return False
        m.bands[th.signal] = BandTable(th)
        return True

    def thresholds_method(self, site: str, meter: str, signal: str) -> str:
        return self._meter(site, meter).bands[signal].method

    def take_due(self) -> list[tuple[str, str, datetime]]:
        """Meters whose recalibration boundary was crossed: (site, meter, boundary). Clears the list."""
        due = [(s, mt, _dt(t)) for (s, mt), t in self._due.items()]
        self._due.clear()
        return due

    def recalibrate(self, site: str, meter: str, data: pd.DataFrame | Sequence[Reading] | tuple, at: datetime) -> list[Thresholds]:
        """Learn bands from ``data`` (a readings frame, Reading records, or (epoch, flow, pressure) columns; only
        [at - threshold_days, at) is used),
        install and return them."""
        import numpy as np

        ts, fl, pr = _columns(data)
        t = np.asarray(ts, dtype=np.float64)
        lo, hi = (at - timedelta(days=self.cfg.threshold_days)).timestamp(), at.timestamp()
        sel = (t >= lo) & (t < hi)
        values = {"flow_rate": np.asarray(fl, dtype=np.float64)[sel], "pressure": np.asarray(pr, dtype=np.float64)[sel]}
        ths = learn_thresholds(site, meter, t[sel], values, at, self.cfg, self.tz, self.interval)
        for th in ths:
            self.set_thresholds(th)
        return ths

    def take_night_flows(self) -> list[NightFlow]:
        out, self._night_out = self._night_out, []
        return out

    # --- bulk paths -------------------------------------------------------------------------
    def process_frame(self, site: str, meter: str, frame: pd.DataFrame | Sequence[Reading]) -> list[Anomaly]:
        """Run a readings frame (UTC DatetimeIndex; flow_rate, pressure) or Reading records through the rules."""
        out: list[Anomaly] = []
        proc = self.process_values
        for t, f, p in zip(*_columns(frame), strict=True):
            r = proc(site, meter, t, f, p)
            if r:
                out += r
        return out

    def backfill(self, site: str, meter: str, frame: pd.DataFrame | Sequence[Reading], *, open_anomalies: Iterable[Anomaly] = (),
                 nights: Iterable[NightFlow] = (), thresholds: Iterable[Thresholds] = (),
                 forecasts: Iterable[Forecast] = ()) -> int:
        """Rebuild a meter's state after a restart, emitting nothing; returns the readings replayed.

        ``frame``: recent stored readings (``backfill_hours``); ``nights``: the stored night-flow
        table (oldest first); ``open_anomalies``: alerts stored as open, continued with their start.
        """
        m = self._meter(site, meter)
        for th in thresholds:
            self.set_thresholds(th)
        for fc in forecasts:
            self.on_forecast(fc)
        self._replay = True
        try:
            sink: list[Anomaly] = []
            for n in sorted(nights, key=lambda n: n.day):
                self._judge_night(m, n.day, n.ts.timestamp(), n.value, sink)
            ts = _columns(frame)[0]
            first = ts[0] if len(ts) else math.inf
            for an in open_anomalies:
                if an.state == "open" and an.kind in SEVERITY and an.kind not in ("night_flow", "gap", "spike") \
                        and an.start.timestamp() < first:
                    self._alert(m, an.kind, an.signal).seed_open(an.start.timestamp(), an.value, an.threshold, an.message)
            self.process_frame(site, meter, frame)
            self._due.pop((site, meter), None)
        finally:
            self._replay = False
        return len(frame)


def _columns(data: Any) -> tuple[list[float], list[float | None], list[float | None]]:
    """(epoch seconds, flow, pressure) lists from a readings frame or a sequence of Reading records."""
    if isinstance(data, tuple) and len(data) == 3:  # already columns
        return data
    if hasattr(data, "index") and hasattr(data, "columns"):  # a pandas frame
        if len(data) == 0:
            return [], [], []
        return (data.index.as_unit("s").asi8.astype("float64").tolist(),
                data["flow_rate"].to_numpy(dtype="float64", na_value=math.nan).tolist(),
                data["pressure"].to_numpy(dtype="float64", na_value=math.nan).tolist())
    rows = list(data)
    return ([r.ts.timestamp() for r in rows], [math.nan if r.flow_rate is None else r.flow_rate for r in rows],
            [math.nan if r.pressure is None else r.pressure for r in rows])
