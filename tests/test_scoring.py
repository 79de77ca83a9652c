"""Scoring (app/scoring.py): alert/label matching and metrics on tiny hand-made inputs."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from app.scoring import (
    AlertSpan,
    Label,
    alarm_metrics,
    bins,
    detection_metrics,
    forecast_metrics,
    format_report,
    match,
    operator_report,
    size_class,
)

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def t(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_size_classes():
    assert size_class(2) == "small"
    assert size_class(4.99) == "small"
    assert size_class(5) == "medium"
    assert size_class(15) == "medium"
    assert size_class(20) == "large"
    assert size_class(math.nan) == "-"


def test_burst_detected_with_delay_and_false_alarm_counted():
    labels = [Label(t(100), t(400), "burst", 25)]
    alerts = [
        AlertSpan(t(50), t(60), "threshold"),  # before the label: false alarm
        AlertSpan(t(103), t(200), "burst"),  # detects, 3 min late
        AlertSpan(t(110), None, "night_flow"),  # also matches, later
    ]
    res, explained = match(labels, alerts, data_end=t(1000))
    assert res[0].detected and res[0].delay == timedelta(minutes=3)
    assert res[0].alerts == [1, 2]
    assert explained == [False, True, True]
    m = detection_metrics(res)
    assert m["burst/large"]["recall"] == 1.0
    assert m["burst/large"]["delay_min_median"] == 3.0
    assert m["burst/large"]["recall_within"]["5min"] == 1.0
    a = alarm_metrics(alerts, explained, scored_days=15)
    assert a["false_alarms"] == 1
    assert a["false_alarms_per_30_days"] == pytest.approx(2.0)
    assert a["precision"] == pytest.approx(2 / 3)
    assert a["false_alarms_by_kind"] == {"threshold": 1}


def test_sensor_alert_does_not_detect_a_leak_but_is_no_false_alarm():
    labels = [Label(t(0), t(100), "leak", 3)]
    alerts = [AlertSpan(t(10), t(20), "flatline")]
    res, explained = match(labels, alerts, data_end=t(200))
    assert not res[0].detected and res[0].delay is None
    assert explained == [True]
    m = detection_metrics(res)
    assert m["leak/small"]["recall"] == 0.0
    assert m["leak/small"]["delay_min_median"] is None


def test_alert_open_before_the_label_has_zero_delay():
    labels = [Label(t(100), t(200), "leak", 10)]
    res, _ = match(labels, [AlertSpan(t(10), None, "threshold")], data_end=t(300))
    assert res[0].delay == timedelta(0)


def test_slack_after_label_end():
    labels = [Label(t(0), t(30), "sensor_fault")]
    near = [AlertSpan(t(31), t(32), "gap")]
    far = [AlertSpan(t(60), t(61), "gap")]
    assert match(labels, near, t(100))[0][0].detected
    res, explained = match(labels, far, t(100))
    assert not res[0].detected and explained == [False]
    assert match(labels, far, t(100), slack=timedelta(minutes=45))[0][0].detected


def test_delay_percentiles_and_recall_within():
    labels = [Label(t(i * 1000), t(i * 1000 + 500), "burst", 30) for i in range(4)]
    alerts = [AlertSpan(t(0 + 2), t(10), "burst"), AlertSpan(t(1000 + 4), t(1010), "burst"), AlertSpan(t(2000 + 90), t(2100), "burst")]
    res, _ = match(labels, alerts, t(5000))
    m = detection_metrics(res)["burst/large"]
    assert m["labels"] == 4 and m["detected"] == 3 and m["recall"] == 0.75
    assert m["delay_min_median"] == 4.0
    assert m["recall_within"]["5min"] == 0.5
    assert m["recall_within"]["1h"] == 0.5
    assert m["recall_within"]["24h"] == 0.75


def test_no_alerts():
    a = alarm_metrics([], [], scored_days=30)
    assert a["alerts"] == 0 and a["precision"] is None and a["false_alarms_per_30_days"] == 0


def test_bins_are_labelled_by_their_end():
    ts = pd.date_range(T0, periods=20, freq="1min")
    s = bins(ts, np.arange(20.0), 10)
    assert list(s.index) == [pd.Timestamp(t(10)), pd.Timestamp(t(20))]
    assert list(s) == [4.5, 14.5]


def test_forecast_metrics_vs_baselines_over_the_same_targets():
    # hourly bins over 8 days: a daily cycle; the "model" is exact except one target
    idx = pd.date_range(T0, periods=8 * 24, freq="1h")
    actual = pd.Series(10 + 5 * np.sin(2 * np.pi * np.arange(len(idx)) / 24), index=idx)
    issued = idx[7 * 24]  # week-ago bins exist from here on
    targets = [issued + pd.Timedelta(hours=h) for h in (1, 2)]
    fc = pd.DataFrame({"issued_at": [issued, issued], "target_time": targets,
                       "value": [actual[targets[0]] + 1.0, actual[targets[1]]], "model": ["v1", "v1"]})
    m = forecast_metrics(fc, actual, 60)
    assert m["targets"] == 2
    assert m["forecast"]["mae"] == pytest.approx(0.5)
    y = actual[targets].to_numpy()
    assert m["persistence"]["mae"] == pytest.approx(np.abs(y - actual[issued]).mean())
    assert m["seasonal_naive"]["mae"] == pytest.approx(0.0, abs=1e-9)  # a pure daily cycle: last week is exact
    assert m["forecast"]["wape"] == pytest.approx(1.0 / np.abs(y).sum())
    assert m["targets_by_model"] == {"v1": 2}
    # a target inside a label is not scored; one without a week-ago value neither
    lab = [Label(targets[0].to_pydatetime(), targets[0].to_pydatetime(), "burst", 30)]
    assert forecast_metrics(fc, actual, 60, lab)["targets"] == 1
    early = pd.DataFrame({"issued_at": [idx[5]], "target_time": [idx[6]], "value": [1.0], "model": ["v1"]})
    assert forecast_metrics(early, actual, 60)["targets"] == 0


def test_the_scored_seasonal_naive_keeps_the_local_wall_time_across_a_daylight_saving_change():
    from app.scoring import week_back

    target = pd.DatetimeIndex(["2026-04-01T05:00:00Z", "2026-10-28T06:00:00Z", "2026-03-20T05:00:00Z"])  # 07:00 CEST, 07:00 CET, 06:00 CET
    back = week_back(target, "Europe/Berlin")
    assert [t.tz_convert("Europe/Berlin").strftime("%m-%d %H:%M") for t in back] == ["03-25 07:00", "10-21 07:00", "03-13 06:00"]
    assert list(back - target) == [pd.Timedelta(hours=-167), pd.Timedelta(hours=-169), pd.Timedelta(hours=-168)]
    assert list(week_back(target)) == list(target - pd.Timedelta(days=7))  # no zone: 168 hours


def test_operator_report_counts_alerts_per_30_days_by_kind_and_severity_without_labels():
    alerts = [AlertSpan(t(0), t(10), "burst", "both", "critical"), AlertSpan(t(100), None, "night_flow", "flow_rate", "warning"),
              AlertSpan(t(200), t(201), "night_flow", "flow_rate", "critical"), AlertSpan(t(300), t(301), "spike", "flow_rate", "info")]
    fc = {"flow_rate": {"targets": 10, "forecast": {"wape": 0.05}, "persistence": {"wape": 0.10}, "seasonal_naive": {"wape": 0.08},
                        "wape_skill_vs_persistence": 0.5, "wape_skill_vs_seasonal_naive": 0.375},
          "pressure": {"targets": 0}}
    r = operator_report(alerts, 60.0, fc)
    assert r["alerts"] == 4 and r["alerts_per_30_days"] == 2.0 and r["hydraulic_alerts_per_30_days"] == 1.5
    assert r["per_30_days_by_kind"] == {"burst": {"critical": 0.5}, "night_flow": {"critical": 0.5, "warning": 0.5},
                                        "spike": {"info": 0.5}}
    assert r["per_30_days_by_severity"] == {"critical": 1.0, "info": 0.5, "warning": 0.5}
    assert r["forecast"]["flow_rate"]["skill_vs_persistence"] == 0.5 and r["forecast"]["pressure"]["targets"] == 0
    text = format_report(r)
    assert "2.00 per 30 days" in text and "skill vs persistence +50%" in text and "no scorable targets" in text
    assert operator_report([], 0.0, {})["alerts_per_30_days"] is None  # nothing scored: no rate, not zero
