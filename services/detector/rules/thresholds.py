"""threshold: outside the band of the local hour of day and day type (weekday / weekend; a public
holiday is a weekend day: ``shared.eventtime.DaysOff``).

Each band is the [low, high] robust quantiles of the recent readings in that hour and day type,
widened on both sides by a margin (a share of the quantile spread, at least a per-signal floor).
Before ``threshold_min_days`` of data exist, the configured static limits apply (method "static").
Learning is pure functions (numpy, no pandas: the service stays small): the readings come from the
caller (the store, or a file for evaluate), when :class:`Recalibration` says the meter is due:
when ``bands_period`` (a week: demand drifts with the seasons) is crossed in event time, and daily
while only static limits exist.

:class:`ThresholdRule` judges each reading against the installed bands, with hysteresis: an open
alert clears only once the value is back inside the band by ``hysteresis_pct`` of its width, on the
side it left.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from services.detector.alerts import AlertState, Condition
from shared.eventtime import floor, weekend
from shared.messages import SIGNALS, Band, Thresholds
from shared.settings import DetectorSettings

MIN_BAND_SAMPLES = 30  # fewer readings than this in one hour/day-type cell: its spread is pooled with the nearest hours
MIN_CELL_SAMPLES = 4  # fewer than this: that band stays static
_STEP = {"day": timedelta(hours=36), "week": timedelta(days=8), "month": timedelta(days=40),
         "quarter": timedelta(days=100), "year": timedelta(days=400)}


def static_thresholds(site: str, meter: str, signal: str, cfg: DetectorSettings, at: datetime, sample_days: float = 0.0) -> Thresholds:
    lo, hi = cfg.static_limits.get(signal, (float("-inf"), float("inf")))
    bands = tuple(Band(hour=h, daytype=d, lower=lo, upper=hi) for h in range(24) for d in ("weekday", "weekend"))
    return Thresholds(site=site, meter=meter, signal=signal, computed_at=at, method="static", bands=bands,
                      sample_days=round(sample_days, 3))


def local_cells(ts: np.ndarray, tz: ZoneInfo, off: Callable[[date], bool] = weekend) -> np.ndarray:
    """hour * 2 + day off of each epoch second in ``ts`` (local time; ``off``: which local dates are
    days off, weekends by default, the site's holidays with ``Settings.calendar``), without pandas."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    keys, inverse = np.unique(ts.astype(np.int64) // 900, return_inverse=True)  # zone offsets are multiples of 15 min
    cells = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys.tolist()):
        lt = datetime.fromtimestamp(k * 900, tz)
        cells[i] = lt.hour * 2 + off(lt.date())
    return cells[inverse]


def learn_thresholds(
    site: str, meter: str, ts: np.ndarray, values: dict[str, np.ndarray], at: datetime, cfg: DetectorSettings,
    tz: ZoneInfo, interval_s: float, off: Callable[[date], bool] = weekend,
) -> list[Thresholds]:
    """Bands for both signals from readings ``ts`` (epoch seconds) and ``values[signal]`` (NaN = missing);
    ``off``: the days off, whose hours form the "weekend" bands."""
    out = []
    cell = local_cells(np.asarray(ts, dtype=np.float64), tz, off)
    q_lo, q_hi = cfg.threshold_quantiles
    for sig in SIGNALS:
        v_all = np.asarray(values.get(sig, np.full(len(cell), np.nan)), dtype=np.float64)
        ok = np.isfinite(v_all)
        sample_days = float(ok.sum()) * interval_s / 86400.0
        static = static_thresholds(site, meter, sig, cfg, at, sample_days)
        if sample_days < cfg.threshold_min_days:
            out.append(static)
            continue
        v, c = v_all[ok], cell[ok]
        order = np.argsort(c, kind="stable")
        v, c = v[order], c[order]
        bounds = np.searchsorted(c, np.arange(49))
        cells = [v[bounds[i] : bounds[i + 1]] for i in range(48)]
        mids = [float(np.median(x)) if len(x) >= MIN_CELL_SAMPLES else math.nan for x in cells]
        resid = [x - m for x, m in zip(cells, mids, strict=True)]  # each cell's readings less its median (pooled_spread)
        min_spread = cfg.threshold_min_spread.get(sig, 0.0)
        bands = []
        for b in static.bands:
            idx = b.hour * 2 + (b.daytype == "weekend")
            sel = cells[idx]
            if len(sel) >= MIN_BAND_SAMPLES:
                lo, hi = np.quantile(sel, [q_lo, q_hi])
            elif (spread := pooled_spread(resid, idx, q_lo, q_hi)) is not None:
                lo, hi = mids[idx] + spread[0], mids[idx] + spread[1]
            else:
                bands.append(b)
                continue
            margin = max((hi - lo) * cfg.threshold_margin_pct / 100.0, min_spread)
            bands.append(Band(hour=b.hour, daytype=b.daytype, lower=round(float(lo - margin), 6), upper=round(float(hi + margin), 6)))
        out.append(Thresholds(site=site, meter=meter, signal=sig, computed_at=at, method="learned", bands=tuple(bands),
                              sample_days=round(sample_days, 3)))
    return out


def pooled_spread(resid: Sequence[np.ndarray], idx: int, q_lo: float, q_hi: float) -> tuple[float, float] | None:
    """The band of a cell with fewer than MIN_BAND_SAMPLES readings (an hourly meter has 20 weekday
    and 8 weekend readings per hour in 28 days; a 15-minute one on a month with holidays), as offsets
    from its own median: the quantiles of ``resid`` (each cell's readings less its own median) of it
    and of the nearest hours of its day type (one hour either side, then two, ...), until there are twice
    MIN_BAND_SAMPLES (with 30, the hourly band of a quiet hourly district raised threshold alerts
    that 60 does not: docs/detector.md); None where the cell itself has fewer than MIN_CELL_SAMPLES
    readings or the day type has too few in all (the static band stays)."""
    hour, off = divmod(idx, 2)
    if len(resid[idx]) < MIN_CELL_SAMPLES:
        return None
    parts, n = [], 0
    for k in range(13):
        for h in sorted({(hour - k) % 24, (hour + k) % 24}):
            r = resid[h * 2 + off]
            if len(r) >= MIN_CELL_SAMPLES:
                parts.append(r)
                n += len(r)
        if n >= 2 * MIN_BAND_SAMPLES:
            r = np.concatenate(parts)
            lo, hi = np.quantile(r, [q_lo, q_hi])
            # the pooled readings come from the same few weeks of days (an hour's neighbours share its
            # day's demand): their extreme quantiles are those days' extremes; never narrower than the
            # normal tail of their robust spread
            sd = 1.4826 * float(np.median(np.abs(r)))
            normal = statistics.NormalDist()
            return min(float(lo), normal.inv_cdf(q_lo) * sd), max(float(hi), normal.inv_cdf(q_hi) * sd)
    return None


class HourCells:
    """The cell (hour * 2 + day off, local time) of an epoch second, one reading at a time: the
    per-reading sibling of :func:`local_cells`, cached per 15 minutes and shared by all meters."""

    __slots__ = ("cells", "off", "tz")

    def __init__(self, tz: ZoneInfo, off: Callable[[date], bool] = weekend) -> None:
        self.tz, self.off = tz, off
        self.cells: dict[int, int] = {}

    def __call__(self, t: float) -> int:
        k = int(t) // 900  # every zone offset is a multiple of 15 minutes
        c = self.cells.get(k)
        if c is None:
            if len(self.cells) > 100_000:
                self.cells.clear()
            lt = datetime.fromtimestamp(k * 900, self.tz)
            c = self.cells[k] = lt.hour * 2 + self.off(lt.date())
        return c


class BandTable:
    """Fast lookup of a Thresholds message: index = hour * 2 + weekend."""

    __slots__ = ("computed_at", "lower", "method", "sample_days", "upper")

    def __init__(self, th: Thresholds) -> None:
        self.lower = [float("-inf")] * 48
        self.upper = [float("inf")] * 48
        for b in th.bands:
            i = b.hour * 2 + (b.daytype == "weekend")
            self.lower[i], self.upper[i] = b.lower, b.upper
        self.method = th.method
        self.sample_days = th.sample_days
        self.computed_at = th.computed_at


def format_bands(th: Thresholds) -> str:
    """A table of the bands for the CLI."""
    lines = [f"{th.site}/{th.meter} {th.signal}: {th.method} ({th.sample_days:.1f} days of data, computed {th.computed_at.isoformat()})",
             "  hour   weekday lower..upper        weekend lower..upper"]
    def fmt(b) -> str:
        return f"{b.lower:>10.3f}..{b.upper:<10.3f}" if b else f"{'-':>22}"

    for h in range(24):
        wd, we = th.band_for(h, False), th.band_for(h, True)
        lines.append(f"  {h:02d}   {fmt(wd)}   {fmt(we)}")
    return "\n".join(lines)


class ThresholdRule:
    """One signal of one meter: its installed bands (static until learned)."""

    __slots__ = ("bands", "cfg", "sig")

    kind = "threshold"

    def __init__(self, sig: str, cfg: DetectorSettings, bands: BandTable) -> None:
        self.sig, self.cfg, self.bands = sig, cfg, bands

    def install(self, th: Thresholds) -> bool:
        """Use ``th`` from now on, unless the installed bands are newer."""
        if self.bands.computed_at > th.computed_at:
            return False
        self.bands = BandTable(th)
        return True

    def check(self, x: float, cell: int, alert: AlertState | None) -> Condition | None:
        cfg, bt = self.cfg, self.bands
        lo, hi = bt.lower[cell], bt.upper[cell]
        is_open = alert is not None and alert.is_open
        if is_open:
            h = (hi - lo) * cfg.hysteresis_pct / 100.0 if hi - lo < math.inf else 0.0
            upper_breach = alert.value is None or lo == -math.inf or alert.value > (lo + hi) / 2
            active = x > hi - h if upper_breach else x < lo + h  # re-enter the band by a margin on the breached side
        else:
            active = x > hi or x < lo
        if not (active or (alert is not None and (is_open or alert.first_true is not None))):
            return None
        thr = hi if x > (lo + hi) / 2 or lo == -math.inf else lo
        msg = ""
        if active and not is_open:
            side = "above the upper" if thr == hi else "below the lower"
            hour, wk = divmod(cell, 2)
            if bt.method == "static":
                how = (f"static limits (detector.static_limits): only {bt.sample_days:.1f} of "
                       f"{cfg.threshold_min_days:g} days of data, bands not learned yet")
            else:
                how = f"learned from {bt.sample_days:.1f} days"
            msg = f"{self.sig} {x:.3f} {side} band {thr:.3f} (hour {hour:02d} {'weekend or holiday' if wk else 'weekday'}; {how})"
        return Condition(active, x, thr, msg)


def next_boundary(t: float, period: str, tz: ZoneInfo) -> float:
    """The first boundary of ``period`` strictly after epoch ``t`` (local time ``tz``)."""
    b = floor(datetime.fromtimestamp(t, UTC), period, tz)
    return floor(b + _STEP[period], period, tz).timestamp()


class Recalibration:
    """When one meter is due to be learned again, in event time: at each boundary of any of
    ``periods`` (the bands' ``bands_period`` and the step thresholds' ``recalibrate_period``; the
    engine learns the step thresholds only when theirs was crossed: :meth:`DetectionEngine.steps_due`),
    and at each local midnight while any of its signals still has static limits or its step
    thresholds are still learning (``learning``, set by the engine)."""

    __slots__ = ("learning", "next", "next_day", "periods", "rules", "tz")

    def __init__(self, periods: Sequence[str], tz: ZoneInfo, rules: Sequence[ThresholdRule]) -> None:
        self.periods, self.tz, self.rules = tuple(dict.fromkeys(periods)), tz, rules
        self.learning = True
        self.next = [math.inf] * len(self.periods)
        self.next_day = math.inf

    def start(self, t: float) -> None:
        """The meter's first reading."""
        self.next = [next_boundary(t, p, self.tz) for p in self.periods]
        self.next_day = next_boundary(t, "day", self.tz)

    def due(self, t: float) -> float | None:
        """The latest boundary (epoch) a reading at ``t`` crossed that makes the meter due, or None."""
        if t < self.next_day:  # nearly every reading (every period starts at a local midnight: none before the next one)
            return None
        at = None
        now = datetime.fromtimestamp(t, UTC)
        for i, period in enumerate(self.periods):
            if t >= self.next[i]:
                at = max(at or -math.inf, floor(now, period, self.tz).timestamp())
                self.next[i] = next_boundary(t, period, self.tz)
        if t >= self.next_day:
            if self.learning or any(r.bands.method == "static" for r in self.rules):
                at = floor(now, "day", self.tz).timestamp()
            self.next_day = next_boundary(t, "day", self.tz)
        return at
