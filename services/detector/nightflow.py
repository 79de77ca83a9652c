"""Minimum night flow (MNF): the standard utility leak indicator.

Each local night, the minimum flow inside the night window (default 02:00–04:00 local; a window whose
end is before its start crosses midnight and belongs to the day it starts on) is recorded. A night
*rises* when its minimum is above the baseline — the median of up to N earlier non-rising nights —
by a share and by an absolute amount. ``night_consecutive`` rising nights in a row open a
"night_flow" alert (leak suspected); the first night that does not rise closes it.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.settings import DetectorSettings


def parse_hhmm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def night_window(ts: datetime, start: time, end: time, tz: ZoneInfo) -> tuple[datetime, datetime, date]:
    """The night window that contains ``ts`` or, if none does, the next one: (start, end, day) with UTC ends."""
    crosses = end <= start
    d0 = ts.astimezone(tz).date()
    for k in (-1, 0, 1):
        d = d0 + timedelta(days=k)
        ws = datetime.combine(d, start, tzinfo=tz)
        we = datetime.combine(d + timedelta(days=1) if crosses else d, end, tzinfo=tz)
        if we > ts:
            return ws.astimezone(ZoneInfo("UTC")), we.astimezone(ZoneInfo("UTC")), d
    raise AssertionError("unreachable: a night window ends within two days")


class NightAccumulator:
    """Tracks the minimum flow of the current night window of one meter."""

    __slots__ = ("count", "day", "end", "expected", "minimum", "start", "tz", "we", "ws")

    def __init__(self, start: time, end: time, tz: ZoneInfo, interval_s: float) -> None:
        self.start, self.end, self.tz = start, end, tz
        self.ws = self.we = 0.0
        self.day: date | None = None
        self.minimum = float("inf")
        self.count = 0
        self.expected = 1.0

    def _open(self, ts: float) -> None:
        ws, we, day = night_window(datetime.fromtimestamp(ts, ZoneInfo("UTC")), self.start, self.end, self.tz)
        self.ws, self.we, self.day = ws.timestamp(), we.timestamp(), day
        self.minimum, self.count = float("inf"), 0

    def add(self, ts: float, flow: float | None, interval_s: float, min_coverage: float) -> tuple[date, float, float] | None:
        """Feed one reading; returns (day, window start epoch, minimum) when a night window completed."""
        done = None
        if self.day is None:
            self._open(ts)
        elif ts >= self.we:
            if self.count and self.count >= min_coverage * (self.we - self.ws) / interval_s:
                done = (self.day, self.ws, self.minimum)
            self._open(ts)
        if flow is not None and self.ws <= ts < self.we:
            self.count += 1
            self.minimum = min(self.minimum, flow)
        return done


class NightLeakRule:
    """Judges each completed night against the baseline of earlier nights."""

    def __init__(self, cfg: DetectorSettings) -> None:
        self.cfg = cfg
        self.nights: OrderedDict[date, tuple[float, bool]] = OrderedDict()  # day -> (value, rising)
        self.run: list[tuple[date, float]] = []  # consecutive rising nights: (day, window start epoch)
        self.last_day: date | None = None

    def baseline(self) -> tuple[float | None, int]:
        vals = [v for v, rising in self.nights.values() if not rising][-self.cfg.night_baseline_nights :]
        if len(vals) < self.cfg.night_min_baseline_nights:
            return None, len(vals)
        return statistics.median(vals), len(vals)

    def judge(self, day: date, ws: float, value: float) -> tuple[bool, float | None, float | None] | None:
        """Record a night; returns (rising, baseline, threshold), or None for a night at or before the last judged."""
        if self.last_day is not None and day <= self.last_day:
            return None
        self.last_day = day
        base, _ = self.baseline()
        rising = False
        thr = None
        if base is not None:
            thr = max(base * (1 + self.cfg.night_rise_pct / 100.0), base + self.cfg.night_rise_abs)
            rising = value > thr
        self.nights[day] = (value, rising)
        while len(self.nights) > self.cfg.night_baseline_nights * 3 + self.cfg.night_consecutive:
            self.nights.popitem(last=False)
        if rising:
            self.run.append((day, ws))
        else:
            self.run.clear()
        return rising, base, thr
