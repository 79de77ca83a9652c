"""gap and silent: readings that did not come.

- gap: a step between two readings longer than ``gap_factor`` intervals (event time), published as
  one closed event from the reading before the gap to the one after it; the interval is the meter's
  configured one or, when it reads less often than that (a logger set to 15 minutes for a meter
  configured at 5, or a file whose cadence changes), the median of its last 16 steps;
- silent: no reading *arrived* for ``silent_intervals`` intervals (wall clock: the only rule that
  looks at a clock; the caller passes ``now`` and when each meter was last heard from). The engine
  closes it with the meter's next reading.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition, Event

if TYPE_CHECKING:
    from shared.settings import DetectorSettings


class GapRule:
    __slots__ = ("factor", "gap_s", "interval", "min_minutes", "steps")

    kind = "gap"
    #: steps a meter's own cadence is taken from (their median), and how many it needs first
    own_steps, own_min = 16, 8

    def __init__(self, cfg: DetectorSettings, interval_s: float) -> None:
        self.factor, self.interval, self.min_minutes = cfg.gap_factor, interval_s, cfg.gap_min_minutes
        self.gap_s = max(cfg.gap_factor * interval_s, cfg.gap_min_minutes * 60)
        self.steps: deque[float] = deque(maxlen=self.own_steps)

    def check(self, last: float, t: float) -> Event | None:
        """The gap between the previous reading at ``last`` and this one at ``t``, if it is one."""
        step = t - last
        self.steps.append(step)
        if step <= self.gap_s:
            return None
        own = statistics.median(self.steps) if len(self.steps) >= self.own_min else 0.0
        if step <= self.factor * own:  # the meter reads less often than its interval says: its own cadence
            return None
        every = f"every {self.interval / 60:g} min" + (f", lately every {own / 60:g}" if own > self.interval else "")
        return Event(last, t, round(step / 60, 3), round(max(self.gap_s, self.factor * own) / 60, 3),
                     f"no reading for {step / 60:.1f} min (expected {every}; "
                     f"detector.gap_factor={self.factor:g}, gap_min_minutes={self.min_minutes:g})")


class SilentRule:
    __slots__ = ("intervals", "interval", "limit")

    kind = "silent"

    def __init__(self, cfg: DetectorSettings, interval_s: float) -> None:
        self.intervals, self.interval = cfg.silent_intervals, interval_s
        self.limit = cfg.silent_intervals * interval_s

    def check(self, now: float, seen: float, alert: AlertState | None) -> Condition | None:
        """Whether a meter last heard from at wall epoch ``seen`` is silent at ``now`` (an open alert
        stays open, unrepeated, until the engine closes it at the next reading)."""
        if now - seen > self.limit and not (alert is not None and alert.is_open):
            return Condition(True, round(now - seen, 3), self.limit,
                             f"no reading for {now - seen:.0f} s (wall clock; detector.silent_intervals="
                             f"{self.intervals:g} x {self.interval:g} s)")
        return None
