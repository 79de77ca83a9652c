"""forecast_deviation: sustained distance from the latest forecast.

The forecast of a signal (from the forecaster, :meth:`ForecastDeviationRule.offer`) is a mean per
bin ``[T - step, T)`` for each target ``T``; its value stands at the middle of the readings the bin
holds (``T - (step + interval) / 2``: a reading belongs to the bin it starts) and is read linearly
between those points. A reading further from it than ``forecast_tolerance_pct`` of the forecast
value (at least ``forecast_tolerance_abs``) counts, and the alert opens once that has lasted
``forecast_sustain_minutes``. A forecast issued while a burst or a pressure loss was open is not
used (made from the anomaly, it would flag the recovery): the engine says so with ``tainted``. Nor
is a seasonal-naive step that copies no ordinary reading: the same time a day or a week after a
burst, pressure loss or drop (the echo of yesterday's burst), persistence on the meter's first
day (a morning rise against the night's last value), or, in its first week, a day of the other day
type (a weekday's early morning rise forecast for the first Saturday); :class:`SeasonalEchoes` gives
those steps as NaN. A model's forecast is not judged on a public holiday (a day off that is not a
weekend, ``Settings.calendar``): its calendar features know the weekday, not the holiday
(:func:`holidays_masked`).

Calibrated to the alarm budget: the rule keeps, per ``forecast_sustain_minutes`` block, the smallest
relative distance from the forecast in it (a block whose smallest distance is over the tolerance is
one the alert would have opened in), for the last ``threshold_days``; at each recalibration
(:meth:`learn`) the tolerance becomes the distance those blocks would exceed at most at the rule's
share of the budget (the exponential-tail fit of ``rules/steps.py``), never under
``forecast_tolerance_pct``. So a district whose demand the serving model follows loosely gets a
wider band, one it follows closely keeps the configured one.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition
from shared.eventtime import wall_clock_back, weekend

if TYPE_CHECKING:
    from datetime import date
    from zoneinfo import ZoneInfo

    from shared.eventtime import DaysOff
    from shared.settings import DetectorSettings


DAY_S, WEEK_S = 86_400.0, 7 * 86_400.0
SEASONAL_NAIVE = "seasonal-naive"  # shared.modelstore.SEASONAL_NAIVE (not imported: the detector stays small)


class SeasonalEchoes:
    """One meter: what a seasonal-naive forecast copied. It forecasts the same time a week earlier
    (with less history, or where that day was of the other day type, e.g. a holiday, the same time
    on the latest day of the target's day type, else on the latest day:
    ``shared.features.seasonal_naive``), so the day or week after a burst, pressure loss or drop it
    forecasts that event again; on the meter's first day it is the last value repeated; and in its
    first week a Saturday may have only weekdays to copy. Those steps are no reference for
    forecast_deviation: :meth:`mask` gives them as NaN."""

    __slots__ = ("cells", "events", "first", "tz")

    def __init__(self, cells: Callable[[float], int] | None = None, tz: ZoneInfo | None = None) -> None:
        self.cells = cells  # epoch -> local cell (hour * 2 + day off: the engine's HourCells); None: no day types
        self.tz = tz  # the local wall time seasonal naive copies (None: by the hour count)
        self.first: float | None = None  # the oldest reading seen (after a restart: the meter's history, as the back-fill knows it)
        self.events: dict[float, float | None] = {}  # the week's bursts, pressure losses, drops: start -> end (None: open)

    def seen(self, t: float) -> None:
        """A reading at ``t`` (the first one counts)."""
        if self.first is None:
            self.first = t

    def note(self, start: float, end: float | None) -> None:
        """An event opened (``end`` None) or closed; kept for a week."""
        self.events[start] = end
        if len(self.events) > 64:
            horizon = max(self.events) - WEEK_S - DAY_S
            for k in [k for k, e in self.events.items() if e is not None and e < horizon]:
                del self.events[k]

    def _copied_nothing_ordinary(self, target: float, step: float, issued: float) -> bool:
        first = self.first
        if first is None or first > target - DAY_S - step:
            return True
        cells, tz = self.cells, self.tz  # the same local wall time as seasonal naive copies (a DST change moves it an hour)
        week_ago = wall_clock_back(target, WEEK_S, tz)
        refs = [wall_clock_back(target, DAY_S, tz), week_ago]
        if cells is not None:
            kind = cells(target - step) & 1  # day off or not; a bin is of the day it starts in
            if first > week_ago - step or cells(week_ago - step) & 1 != kind:  # an earlier day was copied
                # the latest earlier day of the same type whose bin had ended at the issue (the history holds 8 days)
                same = next((r for r in (wall_clock_back(target, k * DAY_S, tz) for k in range(1, 9))
                             if r <= issued and first <= r - step and cells(r - step) & 1 == kind), None)
                if same is None:
                    return True  # only days of the other type to copy
                refs.append(same)
        return any(start <= ref and (end is None or end > ref - step) for ref in refs for start, end in self.events.items())

    def mask(self, targets: list[float], values: list[float], step: float) -> list[float]:
        """``values`` with NaN for the steps (bins of ``step`` s ending at ``targets``) that copy no ordinary reading."""
        issued = targets[0] - step if targets else 0.0
        return [math.nan if self._copied_nothing_ordinary(t, step, issued) else v for t, v in zip(targets, values, strict=True)]


def holidays_masked(targets: list[float], values: list[float], step: float, tz: ZoneInfo, off: DaysOff) -> list[float]:
    """``values`` with NaN for the steps (bins of ``step`` s ending at ``targets``) on a public holiday
    that is not a weekend: a model's calendar features know the day of the week, not the holiday, so
    it forecasts a weekday's demand for a day that runs like a Sunday."""
    return [math.nan if off.holiday(datetime.fromtimestamp(t - step, tz).date()) else v for t, v in zip(targets, values, strict=True)]


class ForecastDeviationRule:
    """One signal of one meter: the latest usable forecast (see :meth:`offer`)."""

    __slots__ = ("block", "block_s", "blocks", "forecast", "interval_s", "learned_days", "minutes", "sig", "tol_abs", "tol_cells", "tol_pct")

    kind = "forecast_deviation"

    def __init__(self, sig: str, cfg: DetectorSettings, interval_s: float = 60.0) -> None:
        self.sig = sig
        self.interval_s = interval_s
        self.tol_pct, self.tol_abs = cfg.forecast_tolerance_pct, cfg.forecast_tolerance_abs.get(sig, 0.0)
        self.minutes = cfg.forecast_sustain_minutes
        self.forecast: tuple[float, list[float], list[float], float] | None = None  # (issued, where bins stand, values, last)
        self.block_s = max(cfg.forecast_sustain_minutes, 1.0) * 60
        self.blocks: deque[tuple[float, float]] = deque(maxlen=max(10, int(cfg.threshold_days * 86400 / self.block_s)))  # (start, distance)
        self.block: tuple[int, float] | None = None  # (block number, smallest relative distance so far)
        self.learned_days: float | None = None
        self.tol_cells: list[float | None] | None = None  # learned per local cell (hour * 2 + weekend), % (None: tol_pct)

    def learn(self, p: float, floor_pct: float, tz: ZoneInfo | None = None, off: Callable[[date], bool] = weekend) -> float | None:
        """Set the tolerance from the recorded blocks so ordinary data exceeds it with probability ``p``
        per block; returns the learned % (None: too few blocks yet, the configured one stays). With
        ``tz``, also per local hour (``tol_cells``: the hour's centre and spread of the distances, one
        tail for all hours, as the step thresholds are learned on a coarse meter): a night's small flow
        is further from any forecast, relatively, than the day's."""
        import numpy as np

        from services.detector.rules.steps import per_cell, tail_threshold
        from services.detector.rules.thresholds import local_cells

        b = np.asarray(self.blocks, dtype=np.float64).reshape(-1, 2)
        thr = tail_threshold(b[:, 1], p) if len(b) else None
        if thr is None:
            return None
        self.tol_pct = max(floor_pct, round(100.0 * thr, 3))
        self.learned_days = round(len(b) * self.block_s / 86400, 1)
        if tz is not None:
            cells = per_cell(local_cells(b[:, 0], tz, off), b[:, 1], p, floor_pct / 100.0)
            self.tol_cells = None if all(c is None for c in cells) else [None if c is None else round(100.0 * c, 3) for c in cells]
        return self.tol_pct

    def _record(self, t: float, rel: float) -> None:
        k = int(t // self.block_s)
        b = self.block
        if b is None or b[0] != k:
            if b is not None:
                self.blocks.append((b[0] * self.block_s, b[1]))
            self.block = (k, rel)
        elif rel < b[1]:
            self.block = (k, rel)

    def offer(self, issued: float, targets: list[float], values: list[float], tainted: bool) -> None:
        """A new forecast: replaces the current one unless older; a tainted one drops the current one.
        Kept as where each bin's mean stands: the middle of the readings the bin holds, ``(step +
        interval) / 2`` before its target (an hourly meter's one reading is at the bin's start, and
        arrived before the forecast was issued: such a meter has nothing to compare), and the time of
        the last bin's last reading."""
        cur = self.forecast
        if cur is not None and cur[0] > issued:
            return
        if tainted:
            self.forecast = None
            return
        step = targets[1] - targets[0] if len(targets) > 1 else targets[0] - issued
        lead = (step + self.interval_s) / 2
        self.forecast = (issued, [x - lead for x in targets], values, targets[-1] - self.interval_s)

    def check(self, t: float, x: float, alert: AlertState | None, cell: int | None = None) -> Condition | None:
        """The reading ``x`` at ``t`` (local ``cell``: hour * 2 + weekend, for a tolerance learned per hour)."""
        fc = self.forecast
        if fc is None:
            return None
        issued, at, values, last = fc
        if not issued < t <= last:
            return None
        j = bisect.bisect_left(at, t)
        if j == 0 or j == len(at):
            fv = values[0] if j == 0 else values[-1]
        else:
            t0, t1 = at[j - 1], at[j]
            fv = values[j - 1] + (values[j] - values[j - 1]) * (t - t0) / (t1 - t0)
        if fv != fv:  # NaN: a step that copied no ordinary reading (SeasonalEchoes.mask)
            return None
        if fv:
            self._record(t, abs(x - fv) / abs(fv))
        cells = self.tol_cells
        hourly = cells is not None and cell is not None and cells[cell] is not None
        pct = cells[cell] if hourly else self.tol_pct  # type: ignore[index]
        tol = max(abs(fv) * pct / 100.0, self.tol_abs)
        dev = abs(x - fv) > tol
        if dev or (alert is not None and (alert.is_open or alert.first_true is not None)):
            at = f" at hour {cell >> 1:02d}" if hourly else ""  # type: ignore[operator]
            how = (f"{pct:g} %{at} learned from {self.learned_days:g} days to detector.alarm_budget_per_30d"
                   if self.learned_days is not None else "detector.forecast_tolerance_pct/abs")
            return Condition(dev, x, fv, f"{self.sig} {x:.3f} vs forecast {fv:.3f} (tolerance {tol:.3f}: {how}) "
                                         f"for {self.minutes:g} min or more")
        return None
