"""flatline: a signal that does not move (by more than ``flatline_tolerance``) for ``flatline_minutes``
and for at least ``flatline_min_readings`` readings, and for ``flatline_own_factor`` times as long as
the meter's own ordinary runs.

A stuck sensor or a frozen register repeats its last value. The alert opens with the reading that
completes the run and closes with the first reading that moves. The count matters at a coarse
interval: at one reading an hour, 60 minutes is a single reading, and a single reading does not move.

A coarse meter repeats itself too: pressure to 0.1 bar holds still for hours at night, and a small
district's flow in whole m³/h stays at 2 for an hour (on such a year the fixed hour alone raised 335
flat-lines per 30 days). So the meter's own ordinary runs are learned with its step thresholds
(:func:`ordinary_run_s`: the 90th percentile, over the days of its history, of each day's longest
run) and a run is a fault only once it lasts ``flatline_own_factor`` times that as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from services.detector.alerts import AlertState, Condition

if TYPE_CHECKING:
    from shared.settings import DetectorSettings


def ordinary_run_s(ts: np.ndarray, values: np.ndarray, tolerance: float, interval_s: float) -> float | None:
    """How long this meter's signal ordinarily stays within ``tolerance`` of a value (the rule's
    definition: a run lasts while readings stay within the tolerance of its first), in seconds to the
    end of its last reading: each day's longest run (by the day it ends, UTC), their 90th percentile,
    one of those days (a day or two with a fault in it do not move it). A run of a day or more is
    never ordinary (a stuck meter, a closed inlet: a meter that starts so would learn it as normal).
    None without an ordinary run."""
    ok = np.isfinite(values)
    t, x = np.asarray(ts, dtype=np.float64)[ok], np.asarray(values, dtype=np.float64)[ok]
    if len(t) == 0:
        return None
    longest: dict[int, float] = {}
    start, ref = float(t[0]), float(x[0])
    tl, xl = t.tolist(), x.tolist()
    for i in range(1, len(tl) + 1):
        if i == len(tl) or abs(xl[i] - ref) > tolerance:
            end = tl[i - 1]
            run = end - start + interval_s
            if run < 86_400:
                day = int(end // 86_400)
                longest[day] = max(longest.get(day, 0.0), run)
            if i < len(tl):
                start, ref = tl[i], xl[i]
    if not longest:
        return None
    return float(np.quantile(list(longest.values()), 0.9, method="lower"))  # of 28 days, 3 may hold still longer


class FlatLineRule:
    """One signal of one meter: since when it has stayed within the tolerance of ``ref``."""

    __slots__ = ("factor", "flat_s", "interval", "min_n", "minutes", "n", "own_s", "ref", "sig", "since", "tolerance")

    kind = "flatline"

    def __init__(self, sig: str, cfg: DetectorSettings, interval_s: float) -> None:
        self.sig, self.interval = sig, interval_s
        self.tolerance, self.minutes = cfg.flatline_tolerance, cfg.flatline_minutes
        self.factor = cfg.flatline_own_factor
        self.flat_s = cfg.flatline_minutes * 60
        self.own_s: float | None = None  # the meter's own ordinary longest run, once learned
        self.min_n = cfg.flatline_min_readings
        self.since: float | None = None
        self.n = 0  # readings in the current run
        self.ref = 0.0

    def learn(self, own_s: float | None) -> None:
        """The meter's own ordinary run (:func:`ordinary_run_s`; None: not learned): a run is a fault
        once it lasts ``flatline_minutes`` and ``flatline_own_factor`` times this."""
        self.own_s = own_s
        self.flat_s = max(self.minutes * 60, self.factor * own_s if own_s else 0.0)

    def check(self, t: float, x: float, alert: AlertState | None) -> Condition | None:
        if self.since is None or abs(x - self.ref) > self.tolerance:
            self.since, self.ref, self.n = t, x, 0
        self.n += 1
        flat = self.n >= self.min_n and t - self.since + self.interval >= self.flat_s
        if flat or (alert is not None and alert.is_open):
            own = (f"; its own runs last up to {self.own_s / 60:g} min, detector.flatline_own_factor {self.factor:g}"
                   if self.own_s and self.flat_s > self.minutes * 60 else "")
            return Condition(flat, x, None, f"{self.sig} unchanged at {x:.3f} for {self.n} readings, "
                                            f"{(t - self.since + self.interval) / 60:g} min (detector.flatline_minutes, flatline_min_readings{own})")
        return None
