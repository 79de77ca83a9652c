"""The detector's decision logic: readings in, alert events out. No I/O, no wall clock.

``DetectionEngine.process(reading)`` returns the :class:`~shared.messages.Anomaly` updates (an
"open" event when an alert starts, a "closed" one when it ends; gaps and spikes come as one closed
event) that this reading caused. State is kept per (site, meter) in O(1)-amortised structures
(deques, a sorted window), so a year of minute data runs through in seconds (``flowwatch evaluate``).

The engine keeps each meter's state and runs the rules (``services/detector/rules/``, parameters:
``DetectorSettings``); each says what it sees, and the engine turns that into alerts with the state
machine of ``alerts.py`` (minimum duration, clear time). Per reading, in event time, in this order:

- silent (rules/liveness.py): an open one closes, the meter spoke again; it is opened by
  :meth:`check_silent`, the only rule that looks at a clock (the caller passes ``now``);
- gap (rules/liveness.py): a step between readings longer than ``gap_factor`` intervals;
- invalid (rules/validity.py): missing / NaN, negative flow, outside the meter's physical range
  (``limits``, with the meter's own ``meters[].limits`` merged over it); an invalid value goes to no
  other rule;
- night_flow (rules/nightflow.py): when a night window completes, its minimum flow against the
  baseline of earlier nights (leak suspected);
- per signal: flatline (rules/flatline.py), spike (rules/spike.py), threshold (rules/thresholds.py:
  the band of the local hour of day and day type), forecast_deviation (rules/forecast.py: sustained
  distance from the latest forecast, :meth:`on_forecast`);
- pressure_loss (rules/pressure.py): pressure under ``pressure_loss_bar`` (critical);
- burst (rules/burst.py): a flow jump and a pressure drop within ``burst_window_minutes`` (critical),
  the flow jump alone on a meter without pressure;
- pressure_drop (rules/pressure.py): the pressure fell against its own recent level without a flow
  jump (supply side; severity from the size).

Each meter runs only the rules of the signals it has (``meter_spec``: ``Settings.meter_spec``), at
its own interval; a signal it does not have is never "missing", and the alerts about the whole
reading (gap, silent, burst) carry its one signal instead of "both". The step thresholds (burst,
pressure_drop) are calibrated from the meter's own history to ``alarm_budget_per_30d``
(``rules/steps.py``) when ``recalibrate_period`` (a quarter) is crossed, daily while the history is
shorter than ``threshold_days``.

Bands are learned when ``bands_period`` (a week: demand drifts with the seasons) or
``recalibrate_period`` is crossed in event time (daily while only static limits exist): the engine
flags the meter in :meth:`take_due` and the caller, who owns the data, calls :meth:`recalibrate`
with the recent readings. Readings at or before the last one seen for a
meter (a redelivery, a replay) change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo

from services.detector.alerts import SEVERITY, AlertState, Condition, Event, Transition, timing
from services.detector.rules.burst import BurstRule
from services.detector.rules.flatline import FlatLineRule, ordinary_run_s
from services.detector.rules.forecast import SEASONAL_NAIVE, ForecastDeviationRule, SeasonalEchoes, holidays_masked
from services.detector.rules.liveness import GapRule, SilentRule
from services.detector.rules.nightflow import NightAccumulator, NightLeakRule, parse_hhmm
from services.detector.rules.pressure import PressureDropRule, PressureLossRule
from services.detector.rules.spike import SpikeRule
from services.detector.rules.steps import SHARE, StepCalibration, calibrate
from services.detector.rules.thresholds import (
    BandTable,
    HourCells,
    Recalibration,
    ThresholdRule,
    learn_thresholds,
    static_thresholds,
)
from services.detector.rules.validity import RangeRule
from shared.eventtime import DaysOff, floor
from shared.messages import SIGNALS, Anomaly, Forecast, Reading, Thresholds
from shared.settings import DetectorSettings, RangeLimits, Settings
from shared.store.base import NightFlow, reading_columns

if TYPE_CHECKING:  # frames are accepted (flowwatch evaluate) but pandas is never imported here
    import pandas as pd

_TAINTING = ("burst", "pressure_loss", "pressure_drop", "flatline")  # a forecast issued while one is open is not used for deviation; nor one that copies it (SeasonalEchoes)
_NEVER = datetime.min.replace(tzinfo=UTC)  # static bands: any stored or learned ones are newer
Key = tuple[str, str]
MeterSpec = Callable[[str], tuple[Sequence[str], float]]  # meter id -> (its signals, its interval in s)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class _SignalRules:
    """The rules of one signal of one meter that keep state per signal."""

    __slots__ = ("flatline", "forecast", "spike", "threshold")

    def __init__(self, site: str, meter: str, sig: str, cfg: DetectorSettings, interval_s: float) -> None:
        self.flatline = FlatLineRule(sig, cfg, interval_s)
        self.spike = SpikeRule(sig, cfg)
        self.threshold = ThresholdRule(sig, cfg, BandTable(static_thresholds(site, meter, sig, cfg, _NEVER)))
        self.forecast = ForecastDeviationRule(sig, cfg, interval_s)


class LearnedCalibration(NamedTuple):
    """Bands and step thresholds learned for one meter, not yet installed (:meth:`DetectionEngine.learn_calibration`)."""

    site: str
    meter: str
    thresholds: list[Thresholds]
    cal: StepCalibration | None


class _Meter:
    """One meter's state: its last reading, its alerts by (kind, signal), and its rules."""

    __slots__ = ("alerts", "all", "burst", "cal", "echoes", "flow", "gap", "interval", "last", "leak", "meter", "night", "pdrop",
                 "pressure", "range", "recal", "sig", "silent", "site")

    def __init__(self, site: str, meter: str, eng: DetectionEngine) -> None:
        cfg = eng.cfg
        self.site, self.meter = site, meter
        signals, interval = eng.spec(meter)
        self.interval = float(interval)
        self.flow, self.pressure = "flow_rate" in signals, "pressure" in signals
        # the signal label of the alerts about the whole reading (gap, silent, burst): "both", or the meter's one signal
        self.all = "both" if self.flow and self.pressure else ("flow_rate" if self.flow else "pressure")
        self.last: float | None = None
        self.echoes = SeasonalEchoes(eng._cells, eng.tz)  # what a seasonal-naive forecast of this meter copied
        self.alerts: dict[Key, AlertState] = {}
        self.sig = {s: _SignalRules(site, meter, s, cfg, self.interval) for s in SIGNALS if s in signals}
        self.range = eng.range_rule(meter)
        self.night = NightAccumulator(eng._night_start, eng._night_end, eng.tz, self.interval, cfg.night_min_coverage,
                                       cfg.night_bin_minutes * 60.0)
        self.leak = NightLeakRule(cfg, eng.days_off)
        self.burst = BurstRule(cfg, self.interval, has_pressure=self.pressure)
        self.pdrop = PressureDropRule(cfg, self.interval, has_flow=self.flow)
        self.gap = GapRule(cfg, self.interval)
        self.silent = SilentRule(cfg, self.interval)  # silent after silent_intervals of *this* meter's interval
        self.cal: StepCalibration | None = None
        self.recal = Recalibration((cfg.bands_period, cfg.recalibrate_period), eng.tz, [r.threshold for r in self.sig.values()])

    def set_calibration(self, cal: StepCalibration | None) -> None:
        self.cal = self.burst.cal = self.pdrop.cal = cal
        for sig, r in self.sig.items():
            r.flatline.learn(cal.flat_run_s.get(sig) if cal is not None else None)
        for sig, pct in (cal.forecast_pct if cal is not None else {}).items():
            r = self.sig.get(sig)
            if r is not None and r.forecast.learned_days is None:  # kept from before a restart
                r.forecast.tol_pct, r.forecast.learned_days = pct, cal.days
                r.forecast.tol_cells = cal.forecast_cells.get(sig)  # type: ignore[union-attr]


class DetectionEngine:
    """Per-meter detection state and rules. Thread-unsafe by design: one caller thread."""

    def __init__(self, cfg: DetectorSettings, tz: ZoneInfo | str = "Asia/Seoul", *,
                 limits: RangeLimits | None = None, interval_s: float = 60.0, meter_spec: MeterSpec | None = None,
                 meter_limits: Callable[[str], RangeLimits] | None = None, days_off: DaysOff | None = None) -> None:
        self.cfg = cfg
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.days_off = days_off or DaysOff()  # weekends, and the site's holidays (Settings.calendar): the "weekend" day type
        self.limits = limits or RangeLimits()
        self.meter_limits = meter_limits  # meter id -> its ranges (Settings.limits_of); `limits` for every meter when None
        self.interval = float(cfg.interval_s or interval_s)
        self.spec: MeterSpec = meter_spec or (lambda _m: (SIGNALS, self.interval))
        self._night_start, self._night_end = parse_hhmm(cfg.night_start), parse_hhmm(cfg.night_end)
        self.late_readings = 0
        self._meters: dict[Key, _Meter] = {}
        self._due: dict[Key, float] = {}
        self._night_out: list[NightFlow] = []
        self._replay = False
        # the stateless rules, shared by all meters
        self._cells = HourCells(self.tz, self.days_off)
        self._range = RangeRule(self.limits)  # of the meters with the box's ranges
        self._pressure_loss = PressureLossRule(cfg)

    @classmethod
    def from_settings(cls, settings: Settings) -> DetectionEngine:
        cfg = settings.detector

        def spec(meter: str) -> tuple[Sequence[str], float]:
            return settings.meter_spec(meter).signals, float(cfg.interval_s or settings.interval_of(meter))

        return cls(cfg, settings.tz, limits=settings.limits, interval_s=settings.collector.interval_s, meter_spec=spec,
                   meter_limits=settings.limits_of, days_off=settings.calendar)

    def range_rule(self, meter: str) -> RangeRule:
        """The invalid rule of ``meter``: its own physical ranges, or the box's (one rule shared by those meters)."""
        lim = self.meter_limits(meter) if self.meter_limits is not None else self.limits
        return self._range if lim == self.limits else RangeRule(lim, box=self.limits)

    # --- meters and alerts ------------------------------------------------------------------
    def last_time(self, site: str, meter: str) -> datetime | None:
        m = self._meters.get((site, meter))
        return _dt(m.last) if m is not None and m.last is not None else None

    def _meter(self, site: str, meter: str) -> _Meter:
        m = self._meters.get((site, meter))
        if m is None:
            m = self._meters[(site, meter)] = _Meter(site, meter, self)
        return m

    def _alert(self, m: _Meter, kind: str, signal: str) -> AlertState:
        a = m.alerts.get((kind, signal))
        if a is None:
            a = m.alerts[(kind, signal)] = AlertState(kind, signal, SEVERITY[kind], *timing(kind, self.cfg), m.interval)
        return a

    def _apply(self, m: _Meter, kind: str, signal: str, t: float, c: Condition | None, out: list[Anomaly]) -> Transition | None:
        """Feed a rule's condition at ``t`` to the (kind, signal) alert (None: the rule has nothing to
        tell it); emit what the alert does."""
        if c is None:
            return None
        a = m.alerts.get((kind, signal)) or self._alert(m, kind, signal)
        if c.severity is not None and c.active and not a.is_open:
            a.severity = c.severity  # by size, for an alert opening now
        tr = a.update(t, c.active, c.value, c.threshold, c.message)
        if tr is not None and kind in _TAINTING:
            m.echoes.note(tr.start, tr.end if tr.state == "closed" else None)
        self._emit(m, a, tr, out)
        return tr

    def _emit(self, m: _Meter, a: AlertState, tr: Transition | None, out: list[Anomaly]) -> None:
        if tr is None or self._replay:
            return
        out.append(Anomaly(
            site=m.site, meter=m.meter, kind=a.kind, signal=a.signal, severity=a.severity, state=tr.state,
            start=_dt(tr.start), end=_dt(tr.end) if tr.end is not None else None, ts=_dt(tr.ts),
            value=tr.value, threshold=tr.threshold, message=tr.message[:500],
        ))

    def _one_shot(self, m: _Meter, kind: str, signal: str, ev: Event, out: list[Anomaly]) -> None:
        if self._replay:
            return
        out.append(Anomaly(
            site=m.site, meter=m.meter, kind=kind, signal=signal, severity=SEVERITY[kind], state="closed",
            start=_dt(ev.start), end=_dt(ev.end), ts=_dt(ev.end), value=ev.value, threshold=ev.threshold,
            message=ev.message[:500],
        ))

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
        a = m.alerts.get(("silent", m.all))
        if a is not None and a.is_open:  # the meter spoke again
            self._emit(m, a, a.force_close(t), out)
        if last is None:
            m.recal.start(t)
            m.echoes.seen(t)
        else:
            ev = m.gap.check(last, t)
            if ev is not None:
                self._one_shot(m, "gap", m.all, ev, out)
            due = m.recal.due(t)
            if due is not None:
                self._due[(site, meter)] = due
        m.last = t

        f = self._valid(m, "flow_rate", flow, t, out) if m.flow else None
        p = self._valid(m, "pressure", pressure, t, out) if m.pressure else None

        if m.flow:
            done = m.night.add(t, f)
            if done is not None:
                self._night_done(m, *done, out)

        cell = self._cells(t)
        if f is not None:
            self._signal_rules(m, "flow_rate", f, t, cell, out)
            fl = m.alerts.get(("flatline", "flow_rate"))
            if fl is not None and fl.is_open:  # a stuck sensor is no baseline for a burst step
                m.burst.flow.clear()
        if p is not None:
            fl = m.alerts.get(("flatline", "pressure"))
            if fl is not None and fl.is_open:  # a stuck sensor is no baseline for a pressure drop or a burst
                m.pdrop.reset()
                m.burst.pressure.clear()
            self._signal_rules(m, "pressure", p, t, cell, out)
            c = self._pressure_loss.check(p, m.alerts.get(("pressure_loss", "pressure")))
            if c is not None:
                self._apply(m, "pressure_loss", "pressure", t, c, out)
        burst = None
        if m.flow:
            c = m.burst.check(t, f, p, burst := m.alerts.get(("burst", m.all)), cell)
            if c is not None:
                tr = self._apply(m, "burst", m.all, t, c, out)
                if tr is not None and tr.state == "open":
                    m.burst.opened()
                burst = m.alerts.get(("burst", m.all))
        if p is not None:
            lj = m.burst.last_jump
            # a flow rise of half a burst step or more explains a pressure fall: demand or a burst, not the supply
            flow_step = (burst is not None and burst.is_open) or (lj is not None and t - lj <= m.burst.window_s) or m.burst.rise > 0.5
            c = m.pdrop.check(t, p, m.alerts.get(("pressure_drop", "pressure")), cell, flow_step)
            if c is not None:
                tr = self._apply(m, "pressure_drop", "pressure", t, c, out)
                if tr is not None and tr.state == "closed":
                    m.pdrop.closed()
        return out

    def _valid(self, m: _Meter, sig: str, x: float | None, t: float, out: list[Anomaly]) -> float | None:
        x, c = m.range.check(sig, x, m.alerts.get(("invalid", sig)))
        if c is not None:
            self._apply(m, "invalid", sig, t, c, out)
        return x

    def _signal_rules(self, m: _Meter, sig: str, x: float, t: float, cell: int, out: list[Anomaly]) -> None:
        # (the `if c is not None` before each _apply only saves a call on the hot path)
        r, alerts = m.sig[sig], m.alerts
        c = r.flatline.check(t, x, alerts.get(("flatline", sig)))
        if c is not None:
            self._apply(m, "flatline", sig, t, c, out)
        ev = r.spike.check(t, x)
        if ev is not None:
            self._one_shot(m, "spike", sig, ev, out)
        c = r.threshold.check(x, cell, alerts.get(("threshold", sig)))
        if c is not None:
            self._apply(m, "threshold", sig, t, c, out)
        c = r.forecast.check(t, x, alerts.get(("forecast_deviation", sig)), cell)
        if c is not None:
            self._apply(m, "forecast_deviation", sig, t, c, out)

    def _night_done(self, m: _Meter, day: date, ws: float, minimum: float, day_mean: float | None, out: list[Anomaly]) -> None:
        if not self._replay:
            self._night_out.append(NightFlow(m.site, m.meter, day, _dt(ws), float(minimum), day_mean))
        self._judge_night(m, day, ws, minimum, day_mean, out)

    def _judge_night(self, m: _Meter, day: date, ws: float, value: float, day_mean: float | None, out: list[Anomaly]) -> None:
        alert = m.alerts.get(("night_flow", "flow_rate"))
        c = m.leak.check(day, ws, value, alert, day_mean)
        if m.leak.closing and alert is not None and alert.is_open:  # closed for another reason than two normal nights: say why
            alert.message = f"{alert.message}; closed: {m.leak.closing}"
        self._apply(m, "night_flow", "flow_rate", ws, c, out)

    # --- wall-clock liveness ----------------------------------------------------------------
    def check_silent(self, now: datetime, last_seen: dict[Key, float]) -> list[Anomaly]:
        """Open 'silent' for meters whose last reading *arrived* (wall epoch) too long before ``now``."""
        out: list[Anomaly] = []
        nowt = now.timestamp()
        for key, seen in last_seen.items():
            m = self._meters.get(key)
            if m is None or m.last is None:
                continue
            self._apply(m, "silent", m.all, m.last, m.silent.check(nowt, seen, m.alerts.get(("silent", m.all))), out)
        return out

    # --- forecasts, thresholds, night flow output -------------------------------------------
    def on_forecast(self, fc: Forecast) -> None:
        m = self._meter(fc.site, fc.meter)
        if fc.signal not in m.sig:  # a signal this meter does not have
            return
        # made from readings of a burst / pressure loss, it would flag the recovery as a deviation
        tainted = any(a.is_open for (kind, _), a in m.alerts.items() if kind in _TAINTING)
        targets = [d.timestamp() for d in fc.targets()]
        values = [float(v) for v in fc.values]
        if fc.model == SEASONAL_NAIVE and not tainted:  # steps that copy no ordinary reading are not judged
            values = m.echoes.mask(targets, values, 60.0 * fc.step_minutes)
        elif not tainted and self.days_off.has_holidays:  # a model knows the weekday, not the holiday: not judged then
            values = holidays_masked(targets, values, 60.0 * fc.step_minutes, self.tz, self.days_off)
        m.sig[fc.signal].forecast.offer(fc.issued_at.timestamp(), targets, values, tainted)

    def set_thresholds(self, th: Thresholds) -> bool:
        """Install bands (from the store, a recalibration, a retained message); older ones are ignored."""
        r = self._meter(th.site, th.meter).sig.get(th.signal)
        return r is not None and r.threshold.install(th)

    def thresholds_method(self, site: str, meter: str, signal: str) -> str:
        r = self._meter(site, meter).sig.get(signal)
        return r.threshold.bands.method if r is not None else "none"

    def take_due(self) -> list[tuple[str, str, datetime]]:
        """Meters whose recalibration boundary was crossed: (site, meter, boundary). Clears the list."""
        due = [(s, mt, _dt(t)) for (s, mt), t in self._due.items()]
        self._due.clear()
        return due

    def recalibrate(self, site: str, meter: str, data: pd.DataFrame | Sequence[Reading] | tuple, at: datetime,
                    steps: bool | None = None) -> list[Thresholds]:
        """Learn bands, and step thresholds where due (``steps``: :meth:`learn_calibration`), from
        ``data`` (a readings frame, Reading records, or (epoch, flow, pressure) columns; only
        [at - threshold_days, at) is used); install them and return the bands (the step thresholds:
        :meth:`calibration`)."""
        return self.install_calibration(self.learn_calibration(site, meter, data, at, steps))

    def steps_due(self, site: str, meter: str, at: datetime) -> bool:
        """Whether a recalibration at ``at`` learns the step thresholds and forecast tolerance as well
        as the bands: while they are learning, and once ``recalibrate_period`` was crossed since they
        were learned (the bands follow the finer ``bands_period``). Reads the installed calibration
        only (replaced whole, under the service's engine lock)."""
        m = self._meters.get((site, meter))
        cal = m.cal if m is not None else None
        return cal is None or m.recal.learning or cal.computed_at < floor(at, self.cfg.recalibrate_period, self.tz).timestamp()

    def learn_calibration(self, site: str, meter: str, data: pd.DataFrame | Sequence[Reading] | tuple, at: datetime,
                          steps: bool | None = None) -> LearnedCalibration:
        """The learning half of :meth:`recalibrate`, nothing installed: it reads only the meter's spec
        and installed calibration, never state that handling readings changes, so it may run on
        another thread than the one that handles them (the detector service's day-boundary thread);
        :meth:`install_calibration` then installs the result in one step. ``steps``: learn the step
        thresholds too (default: when :meth:`steps_due`; an operator's request: always)."""
        import numpy as np

        signals, interval = self.spec(meter)
        interval = float(interval)
        ts, fl, pr = _columns(data)
        t = np.asarray(ts, dtype=np.float64)
        lo, hi = (at - timedelta(days=self.cfg.threshold_days)).timestamp(), at.timestamp()
        sel = (t >= lo) & (t < hi)
        t = t[sel]
        values = {"flow_rate": np.asarray(fl, dtype=np.float64)[sel], "pressure": np.asarray(pr, dtype=np.float64)[sel]}
        ths = [th for th in learn_thresholds(site, meter, t, values, at, self.cfg, self.tz, interval, self.days_off) if th.signal in signals]
        cfg, cal = self.cfg, None
        if steps is None:
            steps = self.steps_due(site, meter, at)
        if steps and len(t) and (len(t) * interval / 86_400) >= cfg.calibration_min_days:
            cal = calibrate(t, values["flow_rate"] if "flow_rate" in signals else None, values["pressure"] if "pressure" in signals else None,
                            interval_s=interval, tz=self.tz, budget_per_30d=cfg.alarm_budget_per_30d,
                            flow_base_s=cfg.burst_baseline_minutes * 60, pressure_base_s=cfg.pressure_drop_baseline_minutes * 60,
                            at=at.timestamp(), min_burst_drop=cfg.burst_pressure_drop, off=self.days_off)
            for sig in signals:  # the flat-line rule's share: how long this meter's signals ordinarily hold still
                own = ordinary_run_s(t, values[sig], cfg.flatline_tolerance, interval)
                if own is not None:
                    cal.flat_run_s[sig] = own
        return LearnedCalibration(site, meter, ths, cal)

    def install_calibration(self, learned: LearnedCalibration) -> list[Thresholds]:
        """Install what :meth:`learn_calibration` learned (bands, step thresholds, the forecast tolerance
        from the distances seen so far); returns the bands."""
        cfg = self.cfg
        m = self._meter(learned.site, learned.meter)
        for th in learned.thresholds:
            self.set_thresholds(th)
        cal = learned.cal
        if cal is not None:
            # forecast deviation: from the distances to the forecasts seen, one test per sustain block
            p = cfg.alarm_budget_per_30d * SHARE * cfg.forecast_sustain_minutes / (30 * 1440)
            for sig, r in m.sig.items():
                pct = r.forecast.learn(p, cfg.forecast_tolerance_pct, self.tz, self.days_off)
                if pct is not None:
                    cal.forecast_pct[sig] = pct
                    if r.forecast.tol_cells is not None:
                        cal.forecast_cells[sig] = list(r.forecast.tol_cells)
            m.set_calibration(cal)
        m.recal.learning = m.cal is None or m.cal.learning(cfg.threshold_days)
        return list(learned.thresholds)

    def calibration(self, site: str, meter: str) -> StepCalibration | None:
        """The meter's step thresholds (None until calibrated), e.g. to keep them over a restart."""
        m = self._meters.get((site, meter))
        return m.cal if m is not None else None

    def set_calibration(self, site: str, meter: str, cal: StepCalibration) -> None:
        """Install step thresholds kept from before a restart (a newer one is kept)."""
        m = self._meter(site, meter)
        if m.cal is None or cal.computed_at >= m.cal.computed_at:
            m.set_calibration(cal)
            m.recal.learning = cal.learning(self.cfg.threshold_days)

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

    def backfill(self, site: str, meter: str, frame: pd.DataFrame | Sequence[Reading], *, anomalies: Iterable[Anomaly] = (),
                 nights: Iterable[NightFlow] = (), thresholds: Iterable[Thresholds] = (),
                 forecasts: Iterable[Forecast] = ()) -> int:
        """Rebuild a meter's state after a restart, emitting nothing; returns the readings replayed.

        ``frame``: recent stored readings (``backfill_hours``); ``nights``: the stored night-flow
        table (oldest first); ``anomalies``: the stored ones of the last week or more; those stored as
        open are continued with their start, and the bursts, pressure losses and drops are remembered
        (a seasonal-naive forecast copies them).
        """
        m = self._meter(site, meter)
        thresholds = list(thresholds)
        for th in thresholds:
            self.set_thresholds(th)
        ts = _columns(frame)[0]
        first = ts[0] if len(ts) else math.inf
        if len(ts):
            # the meter's history reaches back at least as far as its bands were learned from (the
            # back-fill holds only hours): what a seasonal-naive forecast could copy
            learned = max((th.sample_days for th in thresholds), default=0.0)
            m.echoes.seen(min(float(first), float(ts[-1]) - learned * 86_400.0))
        anomalies = list(anomalies)
        for an in anomalies:  # the week's bursts, pressure losses and drops: seasonal naive copies them
            if an.kind in _TAINTING:
                m.echoes.note(an.start.timestamp(), an.end.timestamp() if an.state == "closed" and an.end is not None else None)
        for fc in forecasts:
            self.on_forecast(fc)
        self._replay = True
        try:
            sink: list[Anomaly] = []
            for n in sorted(nights, key=lambda n: n.day):
                self._judge_night(m, n.day, n.ts.timestamp(), n.value, n.day_mean, sink)
            for an in anomalies:
                if an.state == "open" and an.kind in SEVERITY and an.kind not in ("night_flow", "gap", "spike") \
                        and an.start.timestamp() < first:
                    self._alert(m, an.kind, an.signal).seed_open(an.start.timestamp(), an.value, an.threshold, an.message)
            self.process_frame(site, meter, frame)
            self._due.pop((site, meter), None)
        finally:
            self._replay = False
        return len(frame)


def _columns(data: Any) -> tuple[list[float], list[float], list[float]]:
    """(epoch seconds, flow, pressure) lists from a readings frame, Reading records, or columns."""
    if isinstance(data, tuple) and len(data) == 3:  # already columns
        return data
    ts, flow, pres, _q = reading_columns(data)
    return ts.tolist(), flow.tolist(), pres.tolist()
