"""``trainer``: when and how models are trained; where they are kept and what they see is ``models``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings.base import Section


class TrainerSettings(Section):
    moved_keys = {"models_dir": "models.dir", "window_steps": "models.window_steps"}

    first_training_days: float = Field(default=14, gt=0, description="Train first once this many days of data exist.")
    period: Literal["month", "quarter", "year"] = Field(default="year", description="Retrain when event time crosses this boundary.")
    max_days: int = Field(default=365, ge=1, description="Train on at most this many days of data.")
    threads: int = Field(default=1, ge=1, description="CPU threads TensorFlow may use.")
    nice: int = Field(default=10, ge=0, le=19, description="CPU priority decrease while training.")
    epochs: int = Field(default=20, ge=1, description="Most epochs (early stopping may end sooner).")
    max_output_steps: int = Field(
        default=36, ge=1, le=1008,
        description="Most steps the model outputs at once; longer forecaster horizons are rolled forward.",
    )
    units: int = Field(default=32, ge=1, le=512, description="LSTM units.")
    batch_size: int = Field(default=256, ge=1, description="Largest training batch (smaller on little data, for >= ~64 updates per epoch); the exported model runs batch 1.")
    patience: int = Field(default=3, ge=1, description="Early stopping: epochs without validation improvement.")
    learning_rate: float = Field(default=0.003, gt=0, description="Adam learning rate.")
    validation_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="Last part of the training period used for early stopping (time-ordered)."
    )
    holdout_days: float = Field(
        default=7, gt=0, description="Last days held out for the promotion test (at most 30 % of the data)."
    )
    min_improvement: float = Field(
        default=0.0, ge=0, lt=1,
        description="Relative held-out WAPE improvement a new model needs over seasonal naive and the current model.",
    )
    parity_tolerance: float = Field(
        default=1e-3, gt=0, description="Largest allowed |LiteRT - Keras| output difference (scaled units) on held-out windows."
    )
    seed: int = Field(default=42, description="Random seed (numpy, Python, TensorFlow) for reproducible training.")
