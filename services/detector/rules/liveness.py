"""gap and silent: readings that did not come.

- gap: a step between two readings longer than ``gap_factor`` intervals (event time), published as
  one closed event from the reading before the gap to the one after it;
- silent: no reading *arrived* for ``silent_intervals`` intervals (wall clock: the only rule that
  looks at a clock; the caller passes ``now`` and when each meter was last heard from). The engine
  closes it with the meter's next reading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition, Event

if TYPE_CHECKING:
    from shared.settings import DetectorSettings


class GapRule:
    __slots__ = ("factor", "gap_s", "interval", "min_minutes")

    kind = "gap"

    def __init__(self, cfg: DetectorSettings, interval_s: float) -> None:
        self.factor, self.interval, self.min_minutes = cfg.gap_factor, interval_s, cfg.gap_min_minutes
        self.gap_s = max(cfg.gap_factor * interval_s, cfg.gap_min_minutes * 60)

    def check(self, last: float, t: float) -> Event | None:
        """The gap between the previous reading at ``last`` and this one at ``t``, if it is one."""
        if t - last <= self.gap_s:
            return None
        return Event(last, t, round((t - last) / 60, 3), round(self.gap_s / 60, 3),
                     f"no reading for {(t - last) / 60:.1f} min (expected every {self.interval / 60:g} min; "
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
