"""The forecaster's input window, kept in memory from the reading stream (back-filled from the store).

Per signal: the distinct valid readings of each bin (so a redelivered reading counts once), pruned
to the history the forecasts need. Cleaning, binning and gap filling are :mod:`shared.features`'
functions, the same the trainer uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shared import features
from shared.messages import SIGNALS, Reading
from shared.settings import RangeLimits
from shared.store.base import reading_columns


class ReadingWindow:
    def __init__(self, step_minutes: int, history_steps: int, max_gap_steps: int, limits: RangeLimits) -> None:
        self.step_minutes = step_minutes
        self.step_s = 60 * step_minutes
        self.history_steps = history_steps
        self.max_gap_steps = max_gap_steps
        self.limits = limits
        self._bins: dict[str, dict[int, dict[int, float]]] = {s: {} for s in SIGNALS}
        self._latest = 0

    def add(self, ts: int, values: dict[str, float | None], quality: tuple[str, ...] | list[str] = ()) -> None:
        b = int(features.bin_end(ts, self.step_minutes))
        for s in SIGNALS:
            v = features.valid_value(s, values.get(s), quality, self.limits)
            if v is not None:
                self._bins[s].setdefault(b, {})[ts] = v
        if b > self._latest:
            self._latest = b
            self._prune()

    def add_reading(self, r: Reading) -> None:
        self.add(int(r.ts.timestamp()), {"flow_rate": r.flow_rate, "pressure": r.pressure}, r.quality)

    def backfill(self, frame: pd.DataFrame) -> int:
        if frame.empty:
            return 0
        epochs, flow, pres, qual = reading_columns(frame)
        for ts, f, p, q in zip(epochs.tolist(), flow.tolist(), pres.tolist(), qual, strict=True):
            self.add(int(ts), {"flow_rate": f, "pressure": p}, (q or "").split(",") if q else ())
        return len(epochs)

    def _prune(self) -> None:
        oldest = self._latest - (self.history_steps + 2) * self.step_s
        for bins in self._bins.values():
            for b in [b for b in bins if b < oldest]:
                del bins[b]

    def window(self, signal: str, end: int) -> np.ndarray:
        """Gap-filled bin means for the ``history_steps`` bins ending at ``end`` (oldest first)."""
        bins = self._bins[signal]
        n = self.history_steps
        first = end - (n - 1) * self.step_s
        out = np.full(n, np.nan)
        for b, vals in bins.items():
            if first <= b <= end:
                out[(b - first) // self.step_s] = sum(vals.values()) / len(vals)
        return features.fill_gaps(out, self.max_gap_steps)
