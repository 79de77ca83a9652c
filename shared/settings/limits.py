"""``limits``: the physically valid range of each signal (collector, import, features)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings.base import Section


class RangeLimits(Section):
    flow_rate_min: float = Field(default=0.0, description="Lowest physically valid flow rate (m³/h).")
    flow_rate_max: float = Field(default=2000.0, description="Highest physically valid flow rate (m³/h).")
    pressure_min: float = Field(default=0.0, description="Lowest physically valid pressure (bar).")
    pressure_max: float = Field(default=16.0, description="Highest physically valid pressure (bar).")

    @model_validator(mode="after")
    def _ordered(self) -> RangeLimits:
        if self.flow_rate_min >= self.flow_rate_max:
            raise ValueError("flow_rate_min must be below flow_rate_max")
        if self.pressure_min >= self.pressure_max:
            raise ValueError("pressure_min must be below pressure_max")
        return self
