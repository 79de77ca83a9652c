"""The alert state machine every rule shares: minimum duration to open, a clear time to close.

A condition is evaluated per reading (event time). An alert *opens* once its condition has held for
``min_s`` seconds of event time (counting each reading as covering one interval, so with 1-minute
readings and a 3-minute minimum it opens on the third reading in a row), and *closes* once the
condition has been clear for ``clear_s``. Value hysteresis (a band that must be re-entered by a
margin) is the rule's business: it passes the condition it computed with the open/closed state.

The rules (``services/detector/rules/``) say what they see as a :class:`Condition` (fed to the
kind's :class:`AlertState`) or, for a single reading (gap, spike), as an :class:`Event` that is
published closed at once; :data:`SEVERITY` and :func:`timing` give each kind its severity and
its minimum duration and clear time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from shared.settings import DetectorSettings

SEVERITY = {
    "invalid": "warning", "flatline": "warning", "spike": "info", "gap": "info", "silent": "warning",
    "threshold": "warning", "night_flow": "warning", "burst": "critical", "pressure_loss": "critical",
    "forecast_deviation": "warning", "pressure_drop": "warning",
}


def timing(kind: str, cfg: DetectorSettings) -> tuple[float, float]:
    """(min_s, clear_s) of an alert of ``kind``: how long its condition must hold before it opens,
    and be clear before it closes (seconds of event time)."""
    if kind == "threshold":
        return cfg.min_duration_minutes * 60, cfg.clear_after_minutes * 60
    if kind == "forecast_deviation":
        return cfg.forecast_sustain_minutes * 60, cfg.clear_after_minutes * 60
    if kind in ("flatline", "night_flow", "silent"):  # the rule itself decides when it is over
        return 0.0, 0.0
    return 0.0, cfg.clear_after_minutes * 60  # invalid, burst, pressure_loss, pressure_drop: open at once


class Condition(NamedTuple):
    """What a rule saw at one reading, for :meth:`AlertState.update`: whether its condition holds,
    the value and the limit it is measured against, and the message the alert keeps if it opens now
    (or, while open, if this is its worst value so far)."""

    active: bool
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    severity: str | None = None  # the rule's own severity for an alert opening now (by size); None: the kind's


class Event(NamedTuple):
    """A single-reading finding (a gap, a spike): published as one closed alert from start to end."""

    start: float  # epoch seconds
    end: float
    value: float | None
    threshold: float | None
    message: str


@dataclass(slots=True)
class Transition:
    state: str  # "open" | "closed"
    start: float  # epoch seconds
    end: float | None
    ts: float
    value: float | None
    threshold: float | None
    message: str


class AlertState:
    """The state machine of one (kind, signal) alert of one meter: closed, pending, open."""

    __slots__ = (
        "_peak_dev",
        "clear_s",
        "first_false",
        "first_true",
        "is_open",
        "kind",
        "message",
        "min_s",
        "severity",
        "signal",
        "start",
        "step_s",
        "threshold",
        "value",
    )

    def __init__(self, kind: str, signal: str, severity: str, min_s: float, clear_s: float, step_s: float) -> None:
        self.kind, self.signal, self.severity = kind, signal, severity
        self.min_s, self.clear_s, self.step_s = min_s, clear_s, step_s
        self.is_open = False
        self.start = 0.0
        self.first_true: float | None = None
        self.first_false: float | None = None
        self.value: float | None = None
        self.threshold: float | None = None
        self.message = ""
        self._peak_dev = -1.0

    def seed_open(self, start: float, value: float | None, threshold: float | None, message: str) -> None:
        """Continue an alert that was open before a restart (from the store)."""
        self.is_open, self.start, self.first_true, self.first_false = True, start, start, None
        self.value, self.threshold, self.message = value, threshold, message
        self._peak_dev = abs(value - threshold) if value is not None and threshold is not None else -1.0

    def update(
        self, t: float, active: bool, value: float | None = None, threshold: float | None = None, message: str = ""
    ) -> Transition | None:
        if active:
            self.first_false = None
            if self.is_open:
                if value is not None:  # remember the worst value seen while open
                    dev = abs(value - threshold) if threshold is not None else 0.0
                    if dev >= self._peak_dev:
                        self._peak_dev, self.value, self.threshold = dev, value, threshold
                        if message:
                            self.message = message
                return None
            if self.first_true is None:
                self.first_true = t
            if t - self.first_true + self.step_s >= self.min_s:
                self.is_open, self.start = True, self.first_true
                self.value, self.threshold, self.message = value, threshold, message
                self._peak_dev = abs(value - threshold) if value is not None and threshold is not None else -1.0
                return Transition("open", self.start, None, t, value, threshold, message)
            return None
        self.first_true = None
        if not self.is_open:
            return None
        if self.first_false is None:
            self.first_false = t
        if t - self.first_false + self.step_s >= self.clear_s:
            end = self.first_false
            self.is_open, self.first_false = False, None
            return Transition("closed", self.start, max(end, self.start), t, self.value, self.threshold, self.message)
        return None

    def force_close(self, t: float) -> Transition | None:
        """Close now (the condition is known to be over, e.g. a silent meter that spoke again)."""
        self.first_true = None
        if not self.is_open:
            return None
        self.is_open, self.first_false = False, None
        return Transition("closed", self.start, max(t, self.start), t, self.value, self.threshold, self.message)
