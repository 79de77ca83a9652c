"""Quality flags of a reading: missing values and physical range (pure)."""

from __future__ import annotations

from collections.abc import Collection

from shared.messages import SIGNALS, finite_or_none
from shared.settings import RangeLimits


def range_flags(flow_rate: float | None, pressure: float | None, limits: RangeLimits,
                signals: Collection[str] = SIGNALS) -> tuple[str, ...]:
    """Flags for missing (None/NaN) and out-of-range values of the meter's ``signals``. Out of range is
    flagged, never dropped; a signal the meter does not have is absent, not missing."""
    flags: list[str] = []
    for name, value, lo, hi in (
        ("flow_rate", flow_rate, limits.flow_rate_min, limits.flow_rate_max),
        ("pressure", pressure, limits.pressure_min, limits.pressure_max),
    ):
        if name not in signals:
            continue
        v = finite_or_none(value)
        if v is None:
            flags.append(f"{name}_missing")
        elif not lo <= v <= hi:
            flags.append(f"{name}_out_of_range")
    return tuple(flags)
