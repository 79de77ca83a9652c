"""The forecaster's input window of one meter, kept in memory from the reading stream (back-filled
from the store).

Per signal a ring of bins (sum and count of the valid readings of each bin), as long as the history
the forecasts need: a few numbers per bin, so a thousand meters fit in a few tens of MB. A reading
counts once: the timestamps of the last ``DEDUP_S`` of bins are remembered, so a redelivered reading
is not counted twice; a reading older than that (behind the meter's newest reading) is left out of
the window (a stream is in time order; the store has it for the trainer). Cleaning, binning and gap
filling are :mod:`shared.features`' functions, the same the trainer uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shared import features
from shared.messages import SIGNALS, Reading
from shared.settings import RangeLimits
from shared.store.base import reading_columns

DEDUP_S = 2 * 3600  # how far back a redelivered reading is recognised


class ReadingWindow:
    def __init__(self, step_minutes: int, history_steps: int, max_gap_steps: int, limits: RangeLimits,
                 signals: tuple[str, ...] = SIGNALS) -> None:
        self.step_minutes = step_minutes
        self.step_s = 60 * step_minutes
        self.history_steps = history_steps
        self.max_gap_steps = max_gap_steps
        self.limits = limits
        self.signals = tuple(signals)
        self.size = history_steps + 2
        self._label = {s: np.full(self.size, -1, dtype="int64") for s in self.signals}
        self._sum = {s: np.zeros(self.size) for s in self.signals}
        self._count = {s: np.zeros(self.size, dtype="int32") for s in self.signals}
        self._seen: dict[int, set[int]] = {}  # bin end -> timestamps counted (recent bins only)
        self._latest = 0
        self.late = 0  # readings too old to place (behind the newest by more than DEDUP_S)

    def add(self, ts: int, values: dict[str, float | None], quality: tuple[str, ...] | list[str] = ()) -> None:
        b = int(features.bin_end(ts, self.step_minutes))
        if b > self._latest:
            self._latest = b
            oldest = b - max(DEDUP_S, self.step_s)
            for k in [k for k in self._seen if k < oldest]:
                del self._seen[k]
        seen = self._seen.get(b)
        if seen is None:
            if b < self._latest - max(DEDUP_S, self.step_s):
                self.late += 1
                return
            seen = self._seen[b] = set()
        if ts in seen:
            return  # a redelivery
        seen.add(ts)
        slot = (b // self.step_s) % self.size
        for s in self.signals:
            v = features.valid_value(s, values.get(s), quality, self.limits)
            if v is None:
                continue
            if self._label[s][slot] != b:
                self._label[s][slot], self._sum[s][slot], self._count[s][slot] = b, 0.0, 0
            self._sum[s][slot] += v
            self._count[s][slot] += 1

    def add_reading(self, r: Reading) -> None:
        self.add(int(r.ts.timestamp()), {"flow_rate": r.flow_rate, "pressure": r.pressure}, r.quality)

    def backfill(self, frame: pd.DataFrame) -> int:
        if frame.empty:
            return 0
        epochs, flow, pres, qual = reading_columns(frame)
        for ts, f, p, q in zip(epochs.tolist(), flow.tolist(), pres.tolist(), qual, strict=True):
            self.add(int(ts), {"flow_rate": f, "pressure": p}, (q or "").split(",") if q else ())
        return len(epochs)

    def window(self, signal: str, end: int) -> np.ndarray:
        """Gap-filled bin means for the ``history_steps`` bins ending at ``end`` (oldest first)."""
        n = self.history_steps
        bins = end - self.step_s * np.arange(n - 1, -1, -1, dtype="int64")
        if signal not in self._label:
            return np.full(n, np.nan)
        slots = (bins // self.step_s) % self.size
        count = self._count[signal][slots]
        ok = (self._label[signal][slots] == bins) & (count > 0)
        out = np.full(n, np.nan)
        out[ok] = self._sum[signal][slots][ok] / count[ok]
        return features.fill_gaps(out, self.max_gap_steps)
