"""Scoring of alerts against labels and of forecasts against readings: pure functions, no I/O.

Used by ``flowwatch evaluate`` and ``bench/evaluation.py``; the definitions here are the ones
``docs/evaluation.md`` quotes.

Alerts vs labels
  - An alert spans ``[start, end]``; an alert still open at the end of the data ends there.
  - A label *matches* an alert when the alert's kind can detect the label's kind
    (:data:`DETECTS`) and the two overlap, the label extended by ``slack`` after its end (a gap is
    only seen at the first reading after it; a detector's alert may start a few minutes late).
  - Detection delay = first matching alert start - label start (0 when the alert was already open).
  - A false alarm is an alert that overlaps *no* label (any kind; same slack). Precision = alerts
    overlapping some label / all alerts. False alarms per 30 days = count / scored days x 30.
  - Size classes (share of mean inflow): small < 5 %, medium 5-20 %, large >= 20 %.

Forecasts
  - The actual value at a target ``T`` is the mean of the readings in ``[T - step, T)`` (the bin
    the forecaster predicts; see shared/features.py). Persistence = the bin ending at the issue
    time; seasonal naive = the bin ending at ``T - 7 days`` at the same local wall time (across a
    daylight-saving change 167 or 169 hours). Only targets where the forecast, the
    actual and both baselines exist, and that lie inside no label, are scored: all three are
    compared over the same targets. MAE in signal units; WAPE = sum|error| / sum|actual|.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

# Which alert kinds count as detecting which label kinds (for recall; false alarms use any overlap).
HYDRAULIC_ALERTS = frozenset({"burst", "night_flow", "threshold", "pressure_loss", "pressure_drop", "forecast_deviation"})
SENSOR_ALERTS = frozenset({"flatline", "spike", "gap", "invalid", "silent"})
DETECTS: dict[str, frozenset[str]] = {
    "burst": HYDRAULIC_ALERTS,
    "leak": HYDRAULIC_ALERTS,
    "sensor_fault": SENSOR_ALERTS,
}
DEFAULT_SLACK = timedelta(minutes=15)
WITHIN = {"5min": timedelta(minutes=5), "1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


@dataclass(frozen=True)
class Label:
    start: datetime
    end: datetime
    kind: str
    size_pct: float = math.nan


@dataclass(frozen=True)
class AlertSpan:
    start: datetime
    end: datetime | None
    kind: str
    signal: str = "both"
    severity: str = "warning"


@dataclass
class LabelResult:
    label: Label
    detected: bool
    delay: timedelta | None  # to the first matching alert
    alerts: list[int] = field(default_factory=list)  # indices of matching alerts


def size_class(size_pct: float) -> str:
    if size_pct is None or not math.isfinite(size_pct):
        return "-"
    if size_pct < 5:
        return "small"
    if size_pct < 20:
        return "medium"
    return "large"


def _overlaps(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> bool:
    return a0 <= b1 and b0 <= a1


def match(labels: Sequence[Label], alerts: Sequence[AlertSpan], data_end: datetime,
          slack: timedelta = DEFAULT_SLACK, detects: dict[str, frozenset[str]] = DETECTS) -> tuple[list[LabelResult], list[bool]]:
    """Per label: detected + delay; per alert: whether it overlaps some label (else a false alarm)."""
    spans = [(a.start, a.end if a.end is not None else max(data_end, a.start)) for a in alerts]
    results = []
    for lab in labels:
        l1 = lab.end + slack
        ok = detects.get(lab.kind, frozenset())
        hits = [i for i, (a, (s, e)) in enumerate(zip(alerts, spans, strict=True)) if a.kind in ok and _overlaps(s, e, lab.start, l1)]
        if hits:
            first = min(alerts[i].start for i in hits)
            results.append(LabelResult(lab, True, max(first - lab.start, timedelta(0)), hits))
        else:
            results.append(LabelResult(lab, False, None, []))
    explained = [any(_overlaps(s, e, lab.start, lab.end + slack) for lab in labels) for s, e in spans]
    return results, explained


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def detection_metrics(results: Sequence[LabelResult]) -> dict[str, dict]:
    """Recall and delay (minutes) per ``kind/size_class``."""
    groups: dict[str, list[LabelResult]] = {}
    for r in results:
        groups.setdefault(f"{r.label.kind}/{size_class(r.label.size_pct)}", []).append(r)
    out = {}
    for key in sorted(groups):
        rs = groups[key]
        delays = [r.delay.total_seconds() / 60 for r in rs if r.delay is not None]
        out[key] = {
            "labels": len(rs),
            "detected": sum(r.detected for r in rs),
            "recall": sum(r.detected for r in rs) / len(rs),
            "recall_within": {k: sum(1 for r in rs if r.delay is not None and r.delay <= w) / len(rs) for k, w in WITHIN.items()},
            "delay_min_median": _pct(delays, 50),
            "delay_min_p90": _pct(delays, 90),
        }
    return out


def alarm_metrics(alerts: Sequence[AlertSpan], explained: Sequence[bool], scored_days: float) -> dict:
    false = [a for a, ok in zip(alerts, explained, strict=True) if not ok]
    by_kind: dict[str, int] = {}
    for a in false:
        by_kind[a.kind] = by_kind.get(a.kind, 0) + 1
    return {
        "alerts": len(alerts),
        "false_alarms": len(false),
        "false_alarms_per_30_days": (len(false) / scored_days * 30) if scored_days > 0 else None,
        "false_alarms_by_kind": dict(sorted(by_kind.items())),
        "precision": (sum(explained) / len(alerts)) if alerts else None,
        "scored_days": scored_days,
    }


def bins(ts: pd.DatetimeIndex, values: np.ndarray, step_minutes: int) -> pd.Series:
    """Mean of the readings in ``[T - step, T)``, indexed by the bin end ``T`` (UTC); NaN values ignored."""
    s = pd.Series(np.asarray(values, dtype="float64"), index=pd.DatetimeIndex(ts)).dropna()
    if s.empty:
        return s
    ends = s.index.floor(f"{step_minutes}min") + pd.Timedelta(minutes=step_minutes)
    return s.groupby(ends).mean()


def in_labels(times: pd.DatetimeIndex, labels: Iterable[Label], slack: timedelta = DEFAULT_SLACK) -> np.ndarray:
    mask = np.zeros(len(times), dtype=bool)
    for lab in labels:
        mask |= (times >= lab.start) & (times <= lab.end + slack)
    return mask


def week_back(target: pd.DatetimeIndex, tz: str | None = None) -> pd.DatetimeIndex:
    """``target`` (UTC) a week earlier at the same local wall time in ``tz`` (168 hours, or 167 / 169
    across a daylight-saving change), as the forecaster's seasonal naive copies it
    (``shared.eventtime.wall_clock_back``); None: 168 hours."""
    if tz is None:
        return target - pd.Timedelta(days=7)
    from zoneinfo import ZoneInfo

    from shared.eventtime import wall_clock_back

    zone = ZoneInfo(tz)
    seconds = [int(wall_clock_back(float(t), 7 * 86_400, zone)) for t in target.as_unit("s").asi8]
    return pd.DatetimeIndex(pd.to_datetime(np.array(seconds, dtype="int64"), unit="s", utc=True)).as_unit(target.unit)


def forecast_metrics(forecasts: pd.DataFrame, actual: pd.Series, step_minutes: int, labels: Sequence[Label] = (),
                     tz: str | None = None) -> dict:
    """MAE / WAPE of one signal's forecasts vs persistence and seasonal naive over the same targets.

    ``forecasts``: columns issued_at, target_time (UTC), value; ``actual``: :func:`bins` of the readings;
    ``tz``: the site's zone, whose wall time seasonal naive keeps (:func:`week_back`).
    """
    if forecasts.empty or actual.empty:
        return {"targets": 0}
    issued = pd.DatetimeIndex(forecasts["issued_at"])
    target = pd.DatetimeIndex(forecasts["target_time"])
    y = actual.reindex(target).to_numpy()
    persist = actual.reindex(issued).to_numpy()
    snaive = actual.reindex(week_back(target, tz)).to_numpy()
    pred = forecasts["value"].to_numpy(dtype="float64")
    ok = np.isfinite(y) & np.isfinite(persist) & np.isfinite(snaive) & np.isfinite(pred) & ~in_labels(target, labels)
    if "model" in forecasts:
        models = forecasts["model"].to_numpy()[ok]
    else:
        models = np.array([], dtype=object)
    y, pred, persist, snaive = y[ok], pred[ok], persist[ok], snaive[ok]
    if not len(y):
        return {"targets": 0}

    def score(p: np.ndarray) -> dict:
        denom = float(np.abs(y).sum())
        return {"mae": float(np.abs(y - p).mean()), "wape": float(np.abs(y - p).sum() / denom) if denom > 0 else None}

    f, pe, sn = score(pred), score(persist), score(snaive)
    skill = lambda base: (1 - f["wape"] / base["wape"]) if f["wape"] is not None and base["wape"] else None  # noqa: E731
    counts = {str(m): int(c) for m, c in zip(*np.unique(models.astype(str), return_counts=True), strict=True)} if len(models) else {}
    return {
        "targets": int(len(y)),
        "forecast": f,
        "persistence": pe,
        "seasonal_naive": sn,
        "wape_skill_vs_seasonal_naive": skill(sn),
        "wape_skill_vs_persistence": skill(pe),
        "targets_by_model": counts,
    }


def operator_report(alerts: Sequence[AlertSpan], scored_days: float, forecasts: dict[str, dict]) -> dict:
    """What an operator lives with, without labels: alerts per 30 days by kind and by severity, and the
    forecast's skill against persistence and seasonal naive (``forecasts``: :func:`forecast_metrics`
    per signal)."""
    per30 = (lambda n: round(n / scored_days * 30, 2)) if scored_days > 0 else (lambda n: None)  # noqa: E731
    by_kind: dict[str, dict[str, int]] = {}
    by_sev: dict[str, int] = {}
    for a in alerts:
        k = by_kind.setdefault(a.kind, {})
        k[a.severity] = k.get(a.severity, 0) + 1
        by_sev[a.severity] = by_sev.get(a.severity, 0) + 1
    hydraulic = sum(1 for a in alerts if a.kind in HYDRAULIC_ALERTS)
    return {
        "scored_days": round(scored_days, 3),
        "alerts": len(alerts),
        "alerts_per_30_days": per30(len(alerts)),
        "hydraulic_alerts_per_30_days": per30(hydraulic),
        "per_30_days_by_kind": {k: {sev: per30(n) for sev, n in sorted(v.items())} for k, v in sorted(by_kind.items())},
        "per_30_days_by_severity": {sev: per30(n) for sev, n in sorted(by_sev.items(), key=lambda x: x[0])},
        "forecast": {s: {"targets": f.get("targets", 0),
                         "wape": f.get("forecast", {}).get("wape"),
                         "persistence_wape": f.get("persistence", {}).get("wape"),
                         "seasonal_naive_wape": f.get("seasonal_naive", {}).get("wape"),
                         "skill_vs_persistence": f.get("wape_skill_vs_persistence"),
                         "skill_vs_seasonal_naive": f.get("wape_skill_vs_seasonal_naive")} for s, f in forecasts.items()},
    }


def format_report(r: dict) -> str:
    """The operator report as text."""
    def num(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    lines = [f"without labels, over {r['scored_days']:.1f} days: {r['alerts']} alerts, {num(r['alerts_per_30_days'])} per 30 days "
             f"({num(r['hydraulic_alerts_per_30_days'])} hydraulic)"]
    for kind, sev in r["per_30_days_by_kind"].items():
        lines.append(f"  {kind:<20} " + ", ".join(f"{s} {num(v)}" for s, v in sev.items()) + " per 30 days")
    lines.append("forecast (next hour, WAPE; skill = 1 - model / baseline):")
    for s, f in r["forecast"].items():
        if not f["targets"]:
            lines.append(f"  {s:<10} no scorable targets (a week of readings is needed for seasonal naive)")
            continue
        lines.append(f"  {s:<10} model {num(f['wape'], '{:.4f}')}  persistence {num(f['persistence_wape'], '{:.4f}')}  "
                     f"seasonal naive {num(f['seasonal_naive_wape'], '{:.4f}')}  skill vs persistence {num(f['skill_vs_persistence'], '{:+.0%}')}, "
                     f"vs seasonal naive {num(f['skill_vs_seasonal_naive'], '{:+.0%}')}")
    return "\n".join(lines)
