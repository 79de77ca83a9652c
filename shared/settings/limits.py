"""``limits``: the physically valid range of each signal and the plausible window of a reading's time
(collector, services, import, features).

A meter may set its own ranges (``meters[].limits``, merged over these: a DN300 inlet and a small AMR
meter have different physical ranges); the time windows and ``max_meters_per_site`` are the box's.
Services ask :meth:`shared.settings.Settings.limits_of` for a meter's ranges."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pydantic import Field, model_validator

from shared.settings.base import Section


class RangeLimits(Section):
    """Physical ranges of the signals (a meter's own: meters[].limits) and the plausible time of a reading (per box)."""

    flow_rate_min: float = Field(default=0.0, description="Lowest physically valid flow rate (m³/h).")
    flow_rate_max: float = Field(
        default=10000.0,
        description="Highest physically valid flow rate (m³/h): by default that of the largest district inlets (DN1000 at 3.5 m/s; "
        "a district of tens of thousands of customers peaks over 2,000 m³/h); a smaller meter's own range in meters[].limits.",
    )
    pressure_min: float = Field(default=0.0, description="Lowest physically valid pressure (bar).")
    pressure_max: float = Field(default=16.0, description="Highest physically valid pressure (bar).")
    earliest: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="Readings dated before this are implausible: dead-lettered (services) or rejected with their line (files), never stored.",
    )
    max_ahead_s: float = Field(
        default=300.0, ge=0,
        description="How far a reading may be ahead of this machine's clock (meter clock drift). Further ahead is allowed only within max_jump_s of the meter's previous reading (a replay or simulation running ahead of the clock).",
    )
    max_jump_s: float = Field(
        default=6 * 3600.0, gt=0,
        description="How far a reading that is ahead of this machine's clock may be ahead of the meter's previous reading (the longest gap a replay or simulation running ahead of the clock may have).",
    )
    max_meters_per_site: int = Field(
        default=1000, ge=1,
        description="Readings of a new meter beyond this many per site are refused (dead-lettered, counted): a stream of forged meter ids cannot grow state, files and the store without bound.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RangeLimits:
        for key in ("flow_rate_min", "flow_rate_max", "pressure_min", "pressure_max"):
            if not math.isfinite(getattr(self, key)):  # NaN would pass every comparison below and flag every value
                raise ValueError(f"{key} must be a finite number")
        if self.flow_rate_min >= self.flow_rate_max:
            raise ValueError("flow_rate_min must be below flow_rate_max")
        if self.pressure_min >= self.pressure_max:
            raise ValueError("pressure_min must be below pressure_max")
        return self
