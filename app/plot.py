"""``flowwatch plot [--since 24h] -o FILE.png``: flow and pressure with forecasts, thresholds and
anomalies, read from the store — what a person looks at first. One panel per signal the meter has
(a flow-only meter: flow only), then one per extra value it reports (totalizer, battery, ...).

The time window ends at the newest stored reading (event time, so a replayed or simulated week
plots the same as a live one), or at ``--until``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from shared.eventtime import weekend
from shared.runner import base_parser, parse_duration, settings_from_args

logger = logging.getLogger(__name__)

SIGNALS = (("flow_rate", "Flow rate (m³/h)"), ("pressure", "Pressure (bar)"))
MAX_EXTRA_PANELS = 4  # extra values beyond these are named in the title, not drawn
SEVERITY_COLORS = {"info": "tab:blue", "warning": "tab:orange", "critical": "tab:red"}


def plot(store, site: str, meter: str, start: datetime, end: datetime, out: Path, tz,
         signals: Sequence[str] = ("flow_rate", "pressure"), off: Callable[[date], bool] = weekend) -> dict[str, int]:
    """Draw the figure into ``out``; return what was drawn (counts), for the caller and tests.

    ``signals``: the meter's signals (``Settings.meter_spec``); one of them with no reading in the
    window and no forecast is left out, and so is a signal outside them that has no reading. ``off``:
    the local dates that are days off (``Settings.calendar``), whose hours the weekend bands cover."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    readings = store.read_readings(site, meter, start, end)
    forecasts = store.read_forecasts(site, meter, start, end + timedelta(hours=1))
    anomalies = store.read_anomalies(site, meter, start - timedelta(days=1), end)
    if not anomalies.empty:
        ends = anomalies["end"].fillna(end)
        anomalies = anomalies[ends >= start]
    extra = store.read_extra(site, meter, start, end)
    extra_names = list(extra.columns)
    counts = {"readings": len(readings), "forecasts": len(forecasts), "anomalies": len(anomalies), "thresholds": 0,
              "extra": len(extra_names)}

    def has_data(sig: str) -> bool:
        return bool(len(readings) and readings[sig].notna().any()) or bool(
            not forecasts.empty and (forecasts["signal"] == sig).any())

    panels = [(sig, label) for sig, label in SIGNALS if has_data(sig)] or [
        (sig, label) for sig, label in SIGNALS if sig in signals]
    counts["signals"] = [sig for sig, _ in panels]
    shown_extra = extra_names[:MAX_EXTRA_PANELS]
    n = len(panels) + len(shown_extra)
    fig, axes = plt.subplots(n, 1, figsize=(13, 3.75 * len(panels) + 2.2 * len(shown_extra)), sharex=True,
                             constrained_layout=True, squeeze=False)
    axes = list(axes[:, 0])
    for ax, (sig, label) in zip(axes, panels, strict=False):
        local = readings.index.tz_convert(tz) if len(readings) else readings.index
        ax.plot(local, readings[sig], lw=0.8, color="tab:blue", label="reading")
        f = forecasts[forecasts["signal"] == sig] if not forecasts.empty else forecasts
        if not f.empty:
            for i, (_, grp) in enumerate(f.groupby("issued_at")):
                ax.plot(grp["target_time"].dt.tz_convert(tz), grp["value"], "--", lw=1.2, color="tab:orange",
                        label="forecast" if i == 0 else None)
        th = store.latest_thresholds(site, meter, sig)
        if th is not None and len(readings):
            lower, upper = _band_series(th, local, off)
            if lower is not None:
                ax.fill_between(local, lower, upper, color="tab:green", alpha=0.12, step="post",
                                label=f"thresholds ({th.method})")
                counts["thresholds"] += 1
        a = anomalies[anomalies["signal"].isin([sig, "both"])] if not anomalies.empty else anomalies
        for i, row in enumerate(a.itertuples()):
            s = max(row.start, start)
            e = row.end if row.end is not None and row.end == row.end else end
            color = SEVERITY_COLORS.get(row.severity, "tab:red")
            ax.axvspan(s.astimezone(tz), max(e, s + timedelta(minutes=1)).astimezone(tz), color=color, alpha=0.18)
            ax.annotate(row.kind, xy=(s.astimezone(tz), 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                        color=color, rotation=90, va="top", ha="right")
            if i == 0:
                ax.plot([], [], color=color, lw=6, alpha=0.3, label="anomaly")
        _fit_y(ax, readings[sig] if len(readings) else [], f["value"] if not f.empty else [])
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)  # outside: never over the data
    for ax, name in zip(axes[len(panels):], shown_extra, strict=True):
        col = extra[name].dropna()
        ax.plot(col.index.tz_convert(tz), col.to_numpy(), lw=0.8, color="tab:purple", drawstyle="steps-post", label=name)
        _fit_y(ax, col.to_numpy())
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=tz))
    # Start at the first reading when the store holds less than the window (a fresh install).
    first = readings.index.min() if len(readings) else start
    axes[-1].set_xlim(max(start, first).astimezone(tz), (end + timedelta(hours=1)).astimezone(tz))
    axes[-1].set_xlabel(f"local time ({tz.key})")
    more = extra_names[MAX_EXTRA_PANELS:]
    fig.suptitle(f"{site}/{meter}: {start.astimezone(tz):%Y-%m-%d %H:%M} – {end.astimezone(tz):%Y-%m-%d %H:%M}  "
                 f"({counts['readings']} readings, {counts['anomalies']} anomalies)"
                 + (f"; not drawn: {', '.join(more)}" if more else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return counts


def _fit_y(ax, *series) -> None:
    """Scale the y axis to the readings and forecasts, not to a wide static band (0-10,000 m³/h
    would flatten the curve): bands and alert spans are clipped at the edges instead."""
    import numpy as np

    values = np.concatenate([np.asarray(s, dtype=float) for s in series]) if series else np.array([])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    lo, hi = float(values.min()), float(values.max())
    pad = max((hi - lo) * 0.08, abs(hi) * 0.02, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)


def _band_series(th, local_index, off: Callable[[date], bool]):
    """Lower and upper bound at each reading time from the per-hour, per-day-type bands."""
    lower, upper = [], []
    for t in local_index:
        b = th.band_for(t.hour, off(t.date()))
        lower.append(b.lower if b else float("nan"))
        upper.append(b.upper if b else float("nan"))
    if all(x != x for x in lower):
        return None, None
    return lower, upper


def main(argv: Sequence[str]) -> int:
    p = base_parser("plot", "Plot flow and pressure with forecasts, thresholds and anomalies to a PNG.")
    p.add_argument("--since", default="24h", help="how far back from the newest reading (e.g. 90m, 24h, 7d)")
    p.add_argument("--until", default=None, help="end of the window, ISO 8601 (default: the newest reading)")
    p.add_argument("--site", default=None, help="site id (default: the configured site)")
    p.add_argument("--meter", default=None, help="meter id (default: the configured meter)")
    p.add_argument("-o", "--output", required=True, type=Path, help="PNG file to write")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    try:
        span = parse_duration(args.since)
    except ValueError as exc:
        print(f"flowwatch plot: {exc}", file=sys.stderr)
        return 2
    from shared.store import open_store

    site, meter = args.site or settings.site, args.meter or settings.meter
    with open_store(settings) as store:
        if args.until:
            end = datetime.fromisoformat(args.until)
            end = end if end.tzinfo else end.replace(tzinfo=settings.tz)
            end = end.astimezone(UTC)
        else:
            last = store.last_reading_time(site, meter)
            if last is None:
                print(f"flowwatch plot: no readings for {site}/{meter} in the {settings.store.backend} store "
                      "(check site / meter / store settings, or run `flowwatch up` first)", file=sys.stderr)
                return 1
            end = last + timedelta(minutes=1)
        counts = plot(store, site, meter, end - span, end, args.output, settings.tz, settings.meter_spec(meter).signals,
                      settings.calendar)
    print(f"wrote {args.output}: {counts['readings']} readings ({', '.join(counts['signals'])}), {counts['forecasts']} forecast points, "
          f"{counts['anomalies']} anomalies, thresholds for {counts['thresholds']} signal(s), {counts['extra']} extra value(s)")
    return 0
