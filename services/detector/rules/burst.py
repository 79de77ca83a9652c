"""burst: a flow step up together with a pressure step down, within ``burst_window_minutes`` (critical).

A step compares the *level* (median of the last ``LEVEL_N`` readings: one noisy reading is not
a step) with the *baseline* (median of the ``burst_baseline_minutes`` before them, at least 3
readings). The flow step is scaled by the mean flow of the last day, so a burst of a given size
counts the same at the morning peak as at night; a slow diurnal ramp moves level and baseline
together and is not a step. While a burst is open the baselines are frozen (the engine calls
:meth:`BurstRule.opened` when it opens), until the burst ends: a step back as large as a burst's own
step and a third of the one it opened with (the flow falls and, with pressure, the pressure rises), after
which it closes in its clear time however far the day's demand has moved from the frozen baselines.

Thresholds: once the meter's history is calibrated (``rules/steps.py``), the flow step must pass
the threshold of the local hour learned from the meter's own steps to the alarm budget, and the
pressure step its own (a confirmation); until then the fixed ``burst_flow_jump_pct`` /
``burst_pressure_drop`` apply. A meter without pressure decides on the flow step alone (before
calibration, twice the fixed step).

A 15-minute or hourly meter (its baseline stretched to three readings, ``steps.stretched``): level
and baseline are hours apart, so the daily ramp of demand is a step of 20-30 % of the day's mean by
itself. Until calibrated (which learns each hour's ordinary step), a step must then also exceed the
step at the same time a day earlier by the fixed threshold (``steps.DayBefore``); on the meter's first
day there is none, and no burst is decided.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition

if TYPE_CHECKING:
    from shared.settings import DetectorSettings

from services.detector.rules.steps import LEVEL_N, DayBefore, StepCalibration, StepWindow, base_readings, cell_name, stretched


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


class BurstRule:
    """One meter (both signals): the recent readings, the day's mean flow, when each step was last
    seen, and the baselines frozen while a burst is open."""

    __slots__ = ("cal", "cfg", "day_before", "ended", "rise", "flow", "flow_mean", "frozen", "has_pressure", "keep_s", "fixed_rel",
                 "last_drop", "last_jump", "open_step", "pressure", "seen", "step", "window_s")

    kind = "burst"

    def __init__(self, cfg: DetectorSettings, interval_s: float, has_pressure: bool = True) -> None:
        self.cfg = cfg
        self.has_pressure = has_pressure
        self.fixed_rel = cfg.burst_flow_jump_pct / 100.0 * (1 if has_pressure else 2)  # before calibration: twice the step on flow alone
        self.cal: StepCalibration | None = None
        self.rise = 0.0  # the last flow step as a share of its threshold (0 when unknown): does flow explain a pressure fall?
        # level + baseline readings kept (a window in time: at least 3 baseline readings at any interval)
        self.keep_s = (base_readings(cfg.burst_baseline_minutes * 60, interval_s) + LEVEL_N) * interval_s - interval_s / 2
        self.window_s = max(cfg.burst_window_minutes * 60, interval_s)  # at least the next reading
        self.flow = StepWindow(LEVEL_N)  # level + baseline readings
        self.pressure = StepWindow(LEVEL_N)
        self.flow_mean = _DayMean()
        self.last_jump: float | None = None
        self.last_drop: float | None = None
        self.frozen: tuple[float | None, float | None, float | None] = (None, None, None)
        self.seen: tuple[float | None, float | None, float | None] = (None, None, None)
        # the live steps of the last check (flow rise, pressure fall), those the open burst opened with,
        # and whether the burst has ended since (see check)
        self.step: tuple[float | None, float | None] = (None, None)
        self.open_step: tuple[float | None, float | None] = (None, None)
        self.ended = False
        # stretched windows: the flow (relative) and pressure steps of the last day, to judge a step against the day before's
        stretch = stretched(cfg.burst_baseline_minutes * 60, interval_s)
        self.day_before = (DayBefore(interval_s), DayBefore(interval_s)) if stretch else None

    def check(self, t: float, f: float | None, p: float | None, alert: AlertState | None, cell: int = 0) -> Condition | None:
        """``cell``: the local hour * 2 + weekend (the calibrated thresholds' index)."""
        cfg = self.cfg
        fq, pq = self.flow, self.pressure
        if f is not None:
            fq.append(t, f)
            self.flow_mean.add(t, f)
        if p is not None:
            pq.append(t, p)
        horizon = t - self.keep_s
        fq.evict(horizon)
        pq.evict(horizon)
        lf, bf = fq.medians() if f is not None else (None, None)
        lp, bp = pq.medians() if p is not None else (None, None)
        is_open = alert is not None and alert.is_open
        ref = self.flow_mean.value
        # the live steps (flow relative to the day's mean, pressure fall in bar), and the ones a day earlier
        rf = None if lf is None or bf is None or not ref else (lf - bf) / abs(ref)
        rp = None if lp is None or bp is None else bp - lp
        yf = yp = None
        if self.day_before is not None:
            yf, yp = self.day_before[0].add(t, rf), self.day_before[1].add(t, rp)
        self.step = (None if lf is None or bf is None else lf - bf, None if lp is None or bp is None else bp - lp)
        if is_open:
            bf, bp, ref = self.frozen
        cal = self.cal
        rel = cal.flow_rel[cell] if cal is not None else None
        pdrop = cal.burst_pressure[cell] if cal is not None else None
        fixed_f, fixed_p = rel is None, pdrop is None
        if rel is None:  # not calibrated (yet)
            rel = self.fixed_rel
        if pdrop is None:
            pdrop = cfg.burst_pressure_drop
        flow_step = None if ref is None else max(abs(ref) * rel, cfg.burst_flow_jump_abs)  # m³/h
        if is_open and not self.ended and flow_step is not None:
            self.ended = self._reversed(flow_step, pdrop)
        jump_thr = None if bf is None or flow_step is None else bf + flow_step
        jump = lf is not None and jump_thr is not None and lf > jump_thr
        self.rise = 0.0 if jump_thr is None or lf is None or bf is None or jump_thr <= bf else (lf - bf) / (jump_thr - bf)
        drop = lp is not None and bp is not None and bp - lp > pdrop
        if self.day_before is not None and not is_open:  # stretched windows, fixed thresholds: beyond the day before's step too
            if fixed_f:
                jump = jump and rf is not None and yf is not None and rf - yf > rel
            if fixed_p:
                drop = drop and rp is not None and yp is not None and rp - yp > pdrop
        if jump:
            self.last_jump = t
        if drop:
            self.last_drop = t
        if is_open:
            active = (jump or drop) and not self.ended
        elif not self.has_pressure:
            active = jump
        else:
            w = self.window_s
            active = (jump and self.last_drop is not None and t - self.last_drop <= w) or (
                drop and self.last_jump is not None and t - self.last_jump <= w)
        if not (active or is_open or (alert is not None and alert.first_true is not None)):
            return None
        msg = ""
        if active and not is_open:
            how = (f"thresholds of {cell_name(cell)} {cal.learned_from(cfg.threshold_days)}"
                   if cal is not None and cal.flow_rel[cell] is not None else
                   "fixed defaults: the meter's history is still too short to calibrate (detector.calibration_min_days)"
                   + ("; beyond the step at this time a day earlier (a 15-minute or hourly meter's windows span part of "
                      "the daily cycle)" if self.day_before is not None else ""))
            size = "" if lf is None or bf is None or not ref else f" (+{(lf - bf) / ref:.0%} of the day's mean flow {_num(ref)} m³/h)"
            if self.has_pressure:
                msg = (f"burst suspected: flow {_num(lf)} m³/h over the baseline {_num(bf)}{size} and pressure "
                       f"{_num(lp)} bar under the baseline {_num(bp)} (step > {pdrop:.3g} bar) within "
                       f"{cfg.burst_window_minutes:g} min; {how}")
            else:
                msg = f"burst suspected (flow only): flow {_num(lf)} m³/h over the baseline {_num(bf)}{size}; {how}"
        self.seen = (bf, bp, ref)
        return Condition(active, lf, jump_thr, msg)

    def _reversed(self, flow_step: float, pressure_step: float) -> bool:
        """Whether the open burst has ended: the live steps (against the baselines as they are now, not
        the frozen ones) go the other way by at least a burst's own step (``flow_step`` m³/h and
        ``pressure_step`` bar, the thresholds of this hour) and a third of the steps it opened with:
        the flow fell (and, with pressure, the pressure rose) as it rose (fell) when the burst began. A
        burst is repaired or isolated at once; the day's demand does not step like that. A third, not
        all: where the pressure fell with the day's demand (a morning peak) a burst loses less water
        than when it began, and takes less with it when it stops (a 40 m³/h burst of a validation run
        took 18 m³/h off the inflow when it stopped at 08:23). Without it
        the frozen baselines of an afternoon burst kept the alert open all evening (demand, and with it
        the pressure fall, above the afternoon's)."""
        (df, dp), (sf, sp) = self.open_step, self.step
        if df is None or df <= 0 or sf is None or -sf < max(df / 3, flow_step):
            return False
        if not self.has_pressure or dp is None or dp <= 0:
            return True
        return sp is not None and -sp >= max(dp / 3, pressure_step)

    def opened(self) -> None:
        """The burst alert opened with the last check: freeze its baselines while it stays open."""
        self.frozen = self.seen
        self.open_step = self.step
        self.ended = False
