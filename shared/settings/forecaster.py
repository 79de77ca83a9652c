"""``forecaster``: how far ahead the forecaster forecasts and how it runs the model.

The bin width, the model's input window and the gap filling are shared with the trainer: they are in
``models`` (:mod:`shared.settings.modelstore`); the horizon is checked against the bin width in
:mod:`shared.settings.root`.
"""

from __future__ import annotations

from pydantic import Field

from shared.settings.base import Section


class ForecasterSettings(Section):
    moved_keys = {"step_minutes": "models.step_minutes", "max_gap_minutes": "models.max_gap_minutes"}

    horizon_minutes: int = Field(
        default=60, ge=1, le=7 * 24 * 60, description="How far ahead to forecast (up to 7 days); a multiple of models.step_minutes."
    )
    threads: int = Field(default=1, ge=1, le=64, description="CPU threads of the LiteRT interpreter.")
    max_loaded_models: int = Field(
        default=64, ge=1, le=100_000,
        description="Most model versions kept loaded (a LiteRT interpreter each; least recently used out, loaded again when "
        "needed): bounds the forecaster's memory with many meters.",
    )
