"""ML behind an interface: the service calls ``predictor.predict(window, steps)`` and nothing else.

``Window`` is the gap-filled history at the forecast resolution whose last bin ends at the issue
time (see :mod:`shared.features`). Implementations: the exported LiteRT model of a version, the
seasonal-naive baseline served before any model exists (labelled ``seasonal-naive``), and
persistence, served where the trainer found it beats both the model and seasonal naive.

Models are loaded on demand through one bounded :class:`ModelCache` (least recently used out): a
thousand meters' models do not each hold a LiteRT interpreter in memory for ever.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import numpy as np

from shared import features
from shared.eventtime import weekend
from shared.modelstore import PERSISTENCE, SEASONAL_NAIVE, InsufficientData, LiteRTModel, ModelError


@dataclass(frozen=True)
class Window:
    values: np.ndarray  # gap-filled bin means, oldest first, NaN where unknown
    end: int  # epoch seconds of the last bin's end = the issue time
    step_minutes: int
    tz: ZoneInfo | str | None = None  # the site's time zone (seasonal naive's day types); None: ignore them
    off: Callable[[date], bool] = weekend  # which local dates are days off (Settings.calendar: weekends and holidays)


class Predictor(Protocol):
    name: str

    def predict(self, window: Window, steps: int) -> np.ndarray: ...


class SeasonalNaivePredictor:
    """Same time last week, else the latest day of the same day type, else the latest day;
    persistence where none exists."""

    name = SEASONAL_NAIVE

    def predict(self, window: Window, steps: int) -> np.ndarray:
        sn = features.seasonal_naive(window.values, steps, window.step_minutes, window.end, window.tz, window.off)
        return np.where(np.isfinite(sn), sn, features.persistence(window.values, steps))


class PersistencePredictor:
    """The last value repeated: served where it beat the model and seasonal naive on held-out data."""

    name = PERSISTENCE

    def predict(self, window: Window, steps: int) -> np.ndarray:
        return features.persistence(window.values, steps)


BASELINE_PREDICTORS: dict[str, Predictor] = {SEASONAL_NAIVE: SeasonalNaivePredictor(), PERSISTENCE: PersistencePredictor()}


class ModelPredictor:
    """A promoted model version run by LiteRT; raises InsufficientData on a window with long gaps."""

    def __init__(self, path: Path, step_minutes: int, threads: int = 1) -> None:
        self.model = LiteRTModel(path, threads)
        if self.model.meta.step_minutes != step_minutes:
            raise ModelError(f"{path}: trained for {self.model.meta.step_minutes}-minute steps, "
                             f"the meter's bins are {step_minutes} minutes (models.step_minutes and the meter's interval_s); "
                             "retrain (flowwatch train --meter ID)")
        self.name = self.model.version

    def predict(self, window: Window, steps: int) -> np.ndarray:
        return self.model.forecast(window.values, window.end, steps)


class ModelCache:
    """Loaded model versions, at most ``capacity`` (least recently used out). Thread-safe."""

    def __init__(self, capacity: int, threads: int = 1) -> None:
        self.capacity = capacity
        self.threads = threads
        self._items: OrderedDict[tuple[Path, int], ModelPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    def get(self, path: Path, step_minutes: int) -> ModelPredictor:
        """The loaded model of ``path``; raises :class:`ModelError`."""
        key = (path, step_minutes)
        with self._lock:
            p = self._items.get(key)
            if p is not None:
                self._items.move_to_end(key)
                return p
        p = ModelPredictor(path, step_minutes, self.threads)
        with self._lock:
            self._items[key] = p
            self.loads += 1
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evictions += 1
        return p

    def __len__(self) -> int:
        return len(self._items)


class CachedModelPredictor:
    """A promoted version served through the :class:`ModelCache` (loaded when needed)."""

    def __init__(self, path: Path, step_minutes: int, cache: ModelCache) -> None:
        self.path, self.step_minutes, self.cache = path, step_minutes, cache
        self.name = cache.get(path, step_minutes).name  # load once now: refuse a broken version at once

    def predict(self, window: Window, steps: int) -> np.ndarray:
        return self.cache.get(self.path, self.step_minutes).predict(window, steps)


__all__ = ["BASELINE_PREDICTORS", "PERSISTENCE", "SEASONAL_NAIVE", "CachedModelPredictor", "ModelCache", "PersistencePredictor",
           "InsufficientData", "ModelError", "ModelPredictor", "Predictor", "SeasonalNaivePredictor", "Window"]
