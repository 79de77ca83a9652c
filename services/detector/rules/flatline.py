"""flatline: a signal that does not move (by more than ``flatline_tolerance``) for ``flatline_minutes``
and for at least ``flatline_min_readings`` readings.

A stuck sensor or a frozen register repeats its last value. The alert opens with the reading that
completes the run and closes with the first reading that moves. The count matters at a coarse
interval: at one reading an hour, 60 minutes is a single reading, and a single reading does not move.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition

if TYPE_CHECKING:
    from shared.settings import DetectorSettings


class FlatLineRule:
    """One signal of one meter: since when it has stayed within the tolerance of ``ref``."""

    __slots__ = ("flat_s", "interval", "min_n", "minutes", "n", "ref", "sig", "since", "tolerance")

    kind = "flatline"

    def __init__(self, sig: str, cfg: DetectorSettings, interval_s: float) -> None:
        self.sig, self.interval = sig, interval_s
        self.tolerance, self.minutes = cfg.flatline_tolerance, cfg.flatline_minutes
        self.flat_s = cfg.flatline_minutes * 60
        self.min_n = cfg.flatline_min_readings
        self.since: float | None = None
        self.n = 0  # readings in the current run
        self.ref = 0.0

    def check(self, t: float, x: float, alert: AlertState | None) -> Condition | None:
        if self.since is None or abs(x - self.ref) > self.tolerance:
            self.since, self.ref, self.n = t, x, 0
        self.n += 1
        flat = self.n >= self.min_n and t - self.since + self.interval >= self.flat_s
        if flat or (alert is not None and alert.is_open):
            return Condition(flat, x, None, f"{self.sig} unchanged at {x:.3f} for {self.n} readings, "
                                            f"{(t - self.since + self.interval) / 60:g} min (detector.flatline_minutes, flatline_min_readings)")
        return None
