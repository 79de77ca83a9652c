"""spike: an isolated reading far from the rolling median, confirmed by the next reading coming back.

The test is a robust z-score: |x - median| over ``spike_z`` x 1.4826 x MAD of the last
``spike_window`` readings (at least ``spike_min_abs``), and a jump of that size from the previous
reading (a drift past a lagging median is not a spike). The next reading decides: back near the
median, the outlier stood alone and is one closed event; two outliers in a row are a level change,
not a spike. The window is kept sorted (insort / delete), so each reading costs O(window).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import TYPE_CHECKING

from services.detector.alerts import Event

if TYPE_CHECKING:
    from shared.settings import DetectorSettings

MAD_SCALE = 1.4826


def _mad(s: list[float], med: float) -> float:
    """Median absolute deviation of sorted ``s`` around its median element ``med`` (two-pointer merge)."""
    n = len(s)
    m = n // 2
    i, j, dev = m - 1, m + 1, 0.0
    for _ in range(n // 2):
        left = med - s[i] if i >= 0 else math.inf
        right = s[j] - med if j < n else math.inf
        if left <= right:
            dev, i = left, i - 1
        else:
            dev, j = right, j + 1
    return dev


class SpikeRule:
    """One signal of one meter: the rolling window (arrival order and sorted) and a pending outlier."""

    __slots__ = ("fifo", "min_abs", "min_n", "pending", "sig", "sorted", "window", "z")

    kind = "spike"

    def __init__(self, sig: str, cfg: DetectorSettings) -> None:
        self.sig = sig
        self.z, self.window = cfg.spike_z, cfg.spike_window
        self.min_abs = cfg.spike_min_abs.get(sig, 0.0)
        self.min_n = max(5, cfg.spike_window // 2 + 1)
        self.fifo: deque[float] = deque()
        self.sorted: list[float] = []
        self.pending: tuple[float, float, float, float] | None = None  # (ts, value, median, limit)

    def check(self, t: float, x: float) -> Event | None:
        """Feed one reading; returns the spike of the *previous* reading once this one confirms it."""
        w = self.sorted
        n = len(w)
        outlier = False
        med = lim = 0.0
        if n >= self.min_n:
            med = w[n // 2]
            lim = max(self.z * MAD_SCALE * _mad(w, med), self.min_abs)
            outlier = abs(x - med) > lim
        event = None
        pend = self.pending
        if pend is not None:
            pt, pv, pmed, plim = pend
            self.pending = None
            if abs(x - pmed) <= plim and abs(x - pv) > plim:  # came back: the outlier stood alone
                event = Event(pt, t, pv, pmed + (plim if pv > pmed else -plim),
                              f"{self.sig} spike {pv:.3f} against a rolling median of {pmed:.3f} (detector.spike_z={self.z:g})")
        elif outlier and self.fifo and abs(x - self.fifo[-1]) > lim:  # a jump from the previous reading, not a drift
            self.pending = (t, x, med, lim)
        self.fifo.append(x)
        bisect.insort(w, x)
        if n + 1 > self.window:
            old = self.fifo.popleft()
            del w[bisect.bisect_left(w, old)]
        return event
