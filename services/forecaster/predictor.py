"""ML behind an interface: the service calls ``predictor.predict(window, steps)`` and nothing else.

``Window`` is the gap-filled history at the forecast resolution whose last bin ends at the issue
time (see :mod:`shared.features`). Two implementations: the exported LiteRT model of a version, and
the seasonal-naive baseline served before any model exists (labelled ``seasonal-naive``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from shared import features
from shared.modelstore import InsufficientData, LiteRTModel, ModelError

SEASONAL_NAIVE = "seasonal-naive"


@dataclass(frozen=True)
class Window:
    values: np.ndarray  # gap-filled bin means, oldest first, NaN where unknown
    end: int  # epoch seconds of the last bin's end = the issue time
    step_minutes: int


class Predictor(Protocol):
    name: str

    def predict(self, window: Window, steps: int) -> np.ndarray: ...


class SeasonalNaivePredictor:
    """Same time last week, else the latest day; persistence where neither exists."""

    name = SEASONAL_NAIVE

    def predict(self, window: Window, steps: int) -> np.ndarray:
        sn = features.seasonal_naive(window.values, steps, window.step_minutes)
        return np.where(np.isfinite(sn), sn, features.persistence(window.values, steps))


class ModelPredictor:
    """A promoted model version run by LiteRT; raises InsufficientData on a window with long gaps."""

    def __init__(self, path: Path, step_minutes: int, threads: int = 1) -> None:
        self.model = LiteRTModel(path, threads)
        if self.model.meta.step_minutes != step_minutes:
            raise ModelError(f"{path}: trained for {self.model.meta.step_minutes}-minute steps, "
                             f"models.step_minutes is {step_minutes}; retrain (flowwatch train)")
        self.name = self.model.version

    def predict(self, window: Window, steps: int) -> np.ndarray:
        return self.model.forecast(window.values, window.end, steps)


__all__ = ["InsufficientData", "ModelError", "ModelPredictor", "Predictor", "SeasonalNaivePredictor", "Window"]
