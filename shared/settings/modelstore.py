"""``models``: the model store the trainer writes and the forecaster serves from.

What the two sides must agree on lives here, once: where the versions are, the bin width, how many
past bins the model sees and how gaps are filled. A version records them (scaler.json); the
forecaster refuses a model trained at another bin width (retrain with ``flowwatch train``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings.base import Section


class ModelStoreSettings(Section):
    """The model store shared by the trainer (writes) and the forecaster (reads)."""

    dir: Path = Field(
        default=Path("models"),
        description="Model versions (<dir>/<signal>/<version>/); relative to data_dir. The trainer writes them, the forecaster reads them.",
    )
    step_minutes: int = Field(
        default=10, ge=1, le=1440, description="Bin width in minutes: the model's step and the forecast resolution; the forecaster refuses a model trained at another (retrain)."
    )
    window_steps: int = Field(default=36, ge=2, le=1008, description="Past bins (of step_minutes) the model sees.")
    max_gap_minutes: int = Field(
        default=60, ge=0, le=24 * 60,
        description="Gaps up to this long are filled (linear; carried forward at the end), in the training data and in the "
        "forecaster's window alike; longer ones make the forecaster fall back to seasonal naive.",
    )
