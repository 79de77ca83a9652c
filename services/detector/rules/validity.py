"""invalid: a value that is missing / NaN, a negative flow, or outside the physical range (``limits``).

Stateless. An invalid value is passed on to no other rule (the engine drops it: the reading counts
as missing that signal); the alert opens at once and closes after ``clear_after_minutes`` of
valid values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition

if TYPE_CHECKING:
    from shared.settings import RangeLimits

_CLEAR = Condition(False)


class RangeRule:
    """The physical range of each signal, from ``limits`` (a meter's own, when ``box`` is the box's
    that they differ from: the alert then names meters[].limits)."""

    __slots__ = ("ranges",)

    kind = "invalid"

    def __init__(self, limits: RangeLimits, box: RangeLimits | None = None) -> None:
        self.ranges: dict[str, tuple[float, float, str]] = {}
        for sig in ("flow_rate", "pressure"):
            lo, hi = getattr(limits, f"{sig}_min"), getattr(limits, f"{sig}_max")
            own = box is not None and (lo, hi) != (getattr(box, f"{sig}_min"), getattr(box, f"{sig}_max"))
            self.ranges[sig] = (lo, hi, f"{'meters[].' if own else ''}limits.{sig}_min/max")

    def check(self, sig: str, x: float | None, alert: AlertState | None) -> tuple[float | None, Condition | None]:
        """(the value if valid else None, the condition for the signal's "invalid" alert or None when
        there is nothing to tell it)."""
        lo, hi, name = self.ranges[sig]
        if x is not None and lo <= x <= hi:  # NaN fails the range test
            if alert is not None and (alert.is_open or alert.first_true is not None):
                return x, _CLEAR
            return x, None
        if x is None or math.isnan(x):
            val, thr, msg = None, None, f"{sig} is missing"
        elif sig == "flow_rate" and x < 0:
            val, thr, msg = x, 0.0, f"negative flow {x:.3f} m³/h"
        else:
            val, thr = x, (lo if x < lo else hi)
            msg = f"{sig} {x:.3f} outside the physical range [{lo:g}, {hi:g}] ({name})"
        return None, Condition(True, val, thr, msg)
