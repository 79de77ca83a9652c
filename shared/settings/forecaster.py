"""``forecaster``: the forecast resolution, horizon and gap filling, and how the model is run."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings.base import Section


class ForecasterSettings(Section):
    step_minutes: int = Field(default=10, ge=1, le=1440, description="Forecast resolution in minutes.")
    horizon_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60, description="How far ahead to forecast (up to 7 days).")
    max_gap_minutes: int = Field(
        default=60, ge=0, le=24 * 60,
        description="Gaps up to this long are filled (linear; carried forward at the end); longer ones make "
        "the model fall back to seasonal naive. The trainer cleans its data the same way.",
    )
    threads: int = Field(default=1, ge=1, le=64, description="CPU threads of the LiteRT interpreter.")

    @model_validator(mode="after")
    def _divides(self) -> ForecasterSettings:
        if self.horizon_minutes % self.step_minutes:
            raise ValueError("horizon_minutes must be a multiple of step_minutes")
        return self
