"""Learned threshold bands: per signal, per local hour of day and day type (weekday / weekend).

Each band is the [low, high] robust quantiles of the recent readings in that hour and day type,
widened on both sides by a margin (a share of the quantile spread, at least a per-signal floor).
Before ``threshold_min_days`` of data exist, the configured static limits apply (method "static").
Pure functions (numpy, no pandas: the service stays small): the readings come from the caller (the store, or a file for evaluate).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from shared.messages import SIGNALS, Band, Thresholds
from shared.settings import DetectorSettings

MIN_BAND_SAMPLES = 30  # fewer readings than this in one hour/day-type cell: that band stays static


def static_thresholds(site: str, meter: str, signal: str, cfg: DetectorSettings, at: datetime, sample_days: float = 0.0) -> Thresholds:
    lo, hi = cfg.static_limits.get(signal, (float("-inf"), float("inf")))
    bands = tuple(Band(hour=h, daytype=d, lower=lo, upper=hi) for h in range(24) for d in ("weekday", "weekend"))
    return Thresholds(site=site, meter=meter, signal=signal, computed_at=at, method="static", bands=bands,
                      sample_days=round(sample_days, 3))


def local_cells(ts: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """hour * 2 + weekend of each epoch second in ``ts`` (local time), without pandas."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    keys, inverse = np.unique(ts.astype(np.int64) // 900, return_inverse=True)  # zone offsets are multiples of 15 min
    cells = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys.tolist()):
        lt = datetime.fromtimestamp(k * 900, tz)
        cells[i] = lt.hour * 2 + (lt.weekday() >= 5)
    return cells[inverse]


def learn_thresholds(
    site: str, meter: str, ts: np.ndarray, values: dict[str, np.ndarray], at: datetime, cfg: DetectorSettings,
    tz: ZoneInfo, interval_s: float,
) -> list[Thresholds]:
    """Bands for both signals from readings ``ts`` (epoch seconds) and ``values[signal]`` (NaN = missing)."""
    out = []
    cell = local_cells(np.asarray(ts, dtype=np.float64), tz)
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
        floor = cfg.threshold_min_spread.get(sig, 0.0)
        bands = []
        for b in static.bands:
            idx = b.hour * 2 + (b.daytype == "weekend")
            sel = v[bounds[idx] : bounds[idx + 1]]
            if len(sel) < MIN_BAND_SAMPLES:
                bands.append(b)
                continue
            lo, hi = np.quantile(sel, [q_lo, q_hi])
            margin = max((hi - lo) * cfg.threshold_margin_pct / 100.0, floor)
            bands.append(Band(hour=b.hour, daytype=b.daytype, lower=round(float(lo - margin), 6), upper=round(float(hi + margin), 6)))
        out.append(Thresholds(site=site, meter=meter, signal=sig, computed_at=at, method="learned", bands=tuple(bands),
                              sample_days=round(sample_days, 3)))
    return out


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
