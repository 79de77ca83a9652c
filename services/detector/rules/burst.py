"""burst: a flow step up together with a pressure step down, within ``burst_window_minutes`` (critical).

A step compares the *level* (median of the last ``BURST_LEVEL_N`` readings: one noisy reading is not
a step) with the *baseline* (median of the ``burst_baseline_minutes`` before them). The flow step is
scaled by the mean flow of the last day, so a burst of a given size counts the same at the morning
peak as at night; a slow diurnal ramp moves level and baseline together and is not a step. While a
burst is open the baselines are frozen (the engine calls :meth:`BurstRule.opened` when it opens).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition

if TYPE_CHECKING:
    from shared.settings import DetectorSettings

BURST_LEVEL_N = 3  # readings in the burst rule's "level" (median): one noisy reading is not a step


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


class BurstRule:
    """One meter (both signals): the recent readings, the day's mean flow, when each step was last
    seen, and the baselines frozen while a burst is open."""

    __slots__ = ("base_s", "cfg", "flow", "flow_mean", "frozen", "last_drop", "last_jump", "level_s", "pressure", "seen", "window_s")

    kind = "burst"

    def __init__(self, cfg: DetectorSettings, interval_s: float) -> None:
        self.cfg = cfg
        self.base_s, self.level_s = cfg.burst_baseline_minutes * 60, BURST_LEVEL_N * interval_s
        self.window_s = cfg.burst_window_minutes * 60
        self.flow: deque[tuple[float, float]] = deque()  # level + baseline readings (ts, value)
        self.pressure: deque[tuple[float, float]] = deque()
        self.flow_mean = _DayMean()
        self.last_jump: float | None = None
        self.last_drop: float | None = None
        self.frozen: tuple[float | None, float | None, float | None] = (None, None, None)
        self.seen: tuple[float | None, float | None, float | None] = (None, None, None)

    def check(self, t: float, f: float | None, p: float | None, alert: AlertState | None) -> Condition | None:
        cfg = self.cfg
        fq, pq = self.flow, self.pressure
        if f is not None:
            fq.append((t, f))
            self.flow_mean.add(t, f)
        if p is not None:
            pq.append((t, p))
        horizon = t - self.base_s - self.level_s
        while fq and fq[0][0] <= horizon:
            fq.popleft()
        while pq and pq[0][0] <= horizon:
            pq.popleft()
        lf, bf = _level_and_base(fq, BURST_LEVEL_N) if f is not None else (None, None)
        lp, bp = _level_and_base(pq, BURST_LEVEL_N) if p is not None else (None, None)
        is_open = alert is not None and alert.is_open
        if is_open:
            bf, bp, ref = self.frozen
        else:
            ref = self.flow_mean.value
        jump_thr = None if bf is None or ref is None else bf + max(abs(ref) * cfg.burst_flow_jump_pct / 100.0, cfg.burst_flow_jump_abs)
        jump = lf is not None and jump_thr is not None and lf > jump_thr
        drop = lp is not None and bp is not None and bp - lp > cfg.burst_pressure_drop
        if jump:
            self.last_jump = t
        if drop:
            self.last_drop = t
        if is_open:
            active = jump or drop
        else:
            w = self.window_s
            active = (jump and self.last_drop is not None and t - self.last_drop <= w) or (
                drop and self.last_jump is not None and t - self.last_jump <= w)
        if not (active or is_open or (alert is not None and alert.first_true is not None)):
            return None
        msg = ""
        if active and not is_open:
            msg = (f"burst suspected: flow {_num(lf)} m³/h over the baseline {_num(bf)} "
                   f"(step > {cfg.burst_flow_jump_pct:g} % of the day's mean flow {_num(ref)}) and pressure "
                   f"{_num(lp)} bar under the baseline {_num(bp)} (step > {cfg.burst_pressure_drop:g} bar) "
                   f"within {cfg.burst_window_minutes:g} min")
        self.seen = (bf, bp, ref)
        return Condition(active, lf, jump_thr, msg)

    def opened(self) -> None:
        """The burst alert opened with the last check: freeze its baselines while it stays open."""
        self.frozen = self.seen
