"""Step thresholds calibrated from a meter's own history (rules/steps.py) to the alarm budget, flow-only
meters, meters at any interval. Pure: the engine and numpy, no broker, no store."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from services.detector.engine import DetectionEngine
from services.detector.rules.steps import StepCalibration, calibrate, recurring, tail_threshold
from shared.settings import DetectorSettings

TZ = "Asia/Seoul"
T0 = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # local midnight, a Monday


def lumpy_district(days: int, seed: int = 3, interval_min: int = 1, lumps: bool = True) -> pd.DataFrame:
    """A district whose morning rise (06:30-09:15 local) comes in steps: every 3-8 minutes the demand
    jumps to a new level (sd 12 % of the mean flow), so a 5-minute step of 13 % of the day's mean is
    ordinary then (issue 16's measured failure). Pressure follows the flow (friction loss)."""
    rng = np.random.default_rng(seed)
    n = days * 1440 // interval_min
    idx = pd.date_range(T0, periods=n, freq=f"{interval_min}min", tz="UTC", name="ts")
    local = idx.tz_convert(TZ)
    h = (local.hour + local.minute / 60).to_numpy()
    shape = 0.55 + 0.7 * np.exp(-((h - 8) ** 2) / 3) + 0.5 * np.exp(-((h - 19.5) ** 2) / 4)
    day = np.arange(n) * interval_min / 1440  # a day-to-day factor (weather) that drifts, no step at midnight
    flow = 40 * shape / shape.mean() * (1 + np.interp(day, np.arange(days + 1), rng.normal(0, 0.03, days + 1)))
    flow *= 1 + 0.01 * rng.standard_normal(n)
    morning = (h >= 6.5) & (h < 9.25)
    lump = np.zeros(n)
    i = 0
    while i < n:
        k = int(rng.integers(3, 9)) // interval_min or 1
        lump[i:i + k] = rng.normal(0, 0.12 * 40)
        i += k
    flow = np.clip(flow + np.where(morning & lumps, lump, 0.0), 1, None)
    pres = 4.5 - 0.012 * flow + rng.normal(0, 0.005, n)
    return pd.DataFrame({"flow_rate": flow, "pressure": pres}, index=idx)


def epochs(df: pd.DataFrame) -> np.ndarray:
    return (df.index - pd.Timestamp(0, tz=UTC)).total_seconds().to_numpy()


def run(e: DetectionEngine, df: pd.DataFrame, recalibrate: bool = True, meter: str = "m1"):
    """The readings through the engine, recalibrating when it asks (as the service and evaluate do)."""
    out = []
    t = epochs(df)
    for i, (ts, f, p) in enumerate(zip(t.tolist(), df["flow_rate"].tolist(), df["pressure"].tolist(), strict=True)):
        out += e.process_values("s1", meter, float(ts), None if math.isnan(f) else f, None if math.isnan(p) else p)
        for s, m, at in e.take_due():
            if recalibrate:
                e.recalibrate(s, m, df.iloc[: i + 1], at)
    return out


def opened(anoms, kind):
    return [a for a in anoms if a.kind == kind and a.state == "open"]


def with_burst(df: pd.DataFrame, at: datetime, pct: float, minutes: int = 120) -> pd.DataFrame:
    df = df.copy()
    sel = (df.index >= at) & (df.index < at + timedelta(minutes=minutes))
    df.loc[sel, "flow_rate"] += pct / 100 * 40
    df.loc[sel, "pressure"] -= 0.012 * pct / 100 * 40 + 0.1
    return df


def test_tail_threshold_follows_the_budget_and_ignores_one_outlier():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 1, 20_000)
    lax, strict = tail_threshold(s, 1e-2), tail_threshold(s, 1e-5)
    assert 2.0 < lax < strict < 7.0  # rarer alarms: a higher threshold; Gaussian 1e-5 is 4.3 sigma
    s[5] = 1000.0  # a real burst in the history does not set the threshold
    assert tail_threshold(s, 1e-5) < 10
    assert tail_threshold(s[:50], 1e-5) is None  # too few steps: the default applies


def test_lumpy_morning_demand_raises_no_burst_once_calibrated_but_a_midday_burst_still_does():
    quiet = lumpy_district(58)
    fixed = opened(run(DetectionEngine(DetectorSettings(), TZ), quiet, recalibrate=False), "burst")
    assert len(fixed) >= 5  # the failure: the fixed 13 % step on ordinary morning steps
    assert all(6 <= a.start.astimezone(pytest.importorskip("zoneinfo").ZoneInfo(TZ)).hour <= 9 for a in fixed)
    e = DetectionEngine(DetectorSettings(), TZ)
    out = run(e, quiet)
    late = [a for a in opened(out, "burst") if a.start >= T0 + timedelta(days=28)]
    assert len(late) <= 1, [(a.start, a.message) for a in late]  # budget: 1 per 30 days for the meter, all rules
    cal = e.calibration("s1", "m1")
    assert cal is not None and cal.days >= 27
    assert max(cal.flow_rel[14], cal.flow_rel[16]) > 2 * cal.flow_rel[26]  # learned (weekday cells of 07, 08, 13): the morning is lumpy, midday is not
    burst_at = T0 + timedelta(days=56, hours=12, minutes=30)
    e2 = DetectionEngine(DetectorSettings(), TZ)
    b = opened(run(e2, with_burst(quiet, burst_at, 20)), "burst")
    hit = [a for a in b if burst_at <= a.start <= burst_at + timedelta(minutes=5)]
    assert hit and "learned from" in hit[0].message


def with_tank_fills(df: pd.DataFrame, seed: int = 4, pct: float = 25.0, fills: tuple[int, int] = (2, 4)) -> pd.DataFrame:
    """A district with a storage tank (an apartment block's, filled through a float valve): ``fills``
    (at least, at most) times a day, at any hour, the inflow rises by ``pct`` % of the mean flow for
    one to two hours."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    hours = (df.index - df.index[0]).total_seconds().to_numpy() / 3600
    on = np.zeros(len(df), dtype=bool)
    for d in range(int(hours[-1] // 24) + 1):
        for _ in range(int(rng.integers(fills[0], fills[1] + 1))):
            s0 = d * 24 + rng.uniform(0, 24)
            on |= (hours >= s0) & (hours < s0 + rng.uniform(1, 2))
    df.loc[on, "flow_rate"] += pct / 100 * 40
    return df


@pytest.mark.parametrize("fills", [(2, 4), (1, 2)], ids=["2-4 a day", "1-2 a day"])
def test_a_tank_filling_day_after_day_is_learned_as_ordinary_and_a_larger_burst_is_still_caught(fills):
    """A step that crosses an hour's fitted tail on three days or more is the district's own (a tank
    filling, a pump), not a one-off event the tail may leave out: the threshold goes over it; and a
    pulse (up, and down again within three hours) that comes on three days or more, at any hours,
    lifts every hour. A 1-minute district with a tank filled 2-4 times a day (+25 % of the mean
    flow) raised a burst at nearly every fill (78.6 per 30 days, ``python -m bench.field``); filled
    once or twice a day, each hour sees a fill too seldom for the first rule (7.9 per 30 days with it
    alone, 41.4 before)."""
    df = with_tank_fills(lumpy_district(40, lumps=False), fills=fills).assign(pressure=np.nan)
    burst_at = T0 + timedelta(days=38, hours=5)  # no fill starts or ends within half an hour of it
    spec = lambda m: (("flow_rate",), 60.0)  # noqa: E731
    e = DetectionEngine(DetectorSettings(), TZ, meter_spec=spec)
    late = [a for a in opened(run(e, df), "burst") if a.start >= T0 + timedelta(days=28)]
    assert len(late) <= 1, [(a.start, a.message[:120]) for a in late]
    cal = e.calibration("s1", "m1")
    assert min(x for x in cal.flow_rel if x is not None) > 0.25  # over the fills, at every hour
    b = opened(run(DetectionEngine(DetectorSettings(), TZ, meter_spec=spec), with_burst(df, burst_at, 60).assign(pressure=np.nan)), "burst")
    assert [a for a in b if burst_at <= a.start <= burst_at + timedelta(minutes=5)], [(a.start, a.message[:120]) for a in b]


def test_one_burst_in_the_history_beside_ordinary_days_over_the_tail_lifts_no_hour():
    """The steps that must recur are the large ones: a burst in the history and two days whose
    ordinary steps just crossed the fitted threshold are no tank (the burst's hour went to 48 % of
    the day's mean on a simulated district, blind to the next burst under that)."""
    day = np.repeat(np.arange(28), 100)
    x = np.random.default_rng(1).normal(0, 0.01, len(day))
    x[[150, 1250]] = 0.035  # two ordinary days just over the threshold of 0.03
    x[2050] = 0.30  # the burst
    assert recurring(x, day, 0.03) == 0.03
    x[[350, 950, 1650]] = 0.27  # bursts of that size on three more days: that is the district's own
    assert recurring(x, day, 0.03) == pytest.approx(0.30 + 0.5 * (0.30 - 0.03))


def test_a_flow_only_meter_decides_bursts_on_flow_and_never_says_pressure_is_missing():
    df = lumpy_district(40).assign(pressure=np.nan)
    burst_at = T0 + timedelta(days=38, hours=13)
    df = with_burst(df, burst_at, 25).assign(pressure=np.nan)
    e = DetectionEngine(DetectorSettings(), TZ, meter_spec=lambda m: (("flow_rate",), 60.0))
    out = run(e, df)
    assert not [a for a in out if a.signal == "pressure"]
    assert not opened(out, "pressure_drop") and not opened(out, "invalid")
    late = [a for a in opened(out, "burst") if a.start >= T0 + timedelta(days=28)]
    assert [a.start for a in late if a.start < burst_at] == []  # no false burst after learning
    hit = [a for a in late if burst_at <= a.start <= burst_at + timedelta(minutes=5)]
    assert hit and "flow only" in hit[0].message and "learned from 28.0 days" in hit[0].message
    assert "still learning" not in hit[0].message
    assert e.calibration("s1", "m1").pressure_drop == [None] * 48


def test_a_15_minute_meter_sees_a_burst_and_a_pressure_drop():
    """Windows are in time, with at least three baseline readings (at 15 minutes the 5-minute burst
    baseline would hold no reading at all), and the steps of a 15-minute meter are learned as they are:
    over 45 minutes the morning ramp alone is a step of ~20 % of the mean flow."""
    df = lumpy_district(10, interval_min=15, lumps=False)
    burst_at = T0 + timedelta(days=9, hours=3)
    df = with_burst(df, burst_at, 40, minutes=180)
    drop_at = T0 + timedelta(days=8, hours=2)
    sel = (df.index >= drop_at) & (df.index < drop_at + timedelta(hours=2))
    df.loc[sel, "pressure"] -= 1.2
    e = DetectionEngine(DetectorSettings(), TZ, meter_spec=lambda m: (("flow_rate", "pressure"), 900.0))
    out = run(e, df)
    learned = T0 + timedelta(days=7, hours=1)
    b = [a for a in opened(out, "burst") if a.start >= learned]
    assert len(b) == 1 and burst_at <= b[0].start <= burst_at + timedelta(minutes=30), [a.start for a in b]
    d = [a for a in opened(out, "pressure_drop") if a.start >= learned]
    assert len(d) == 1 and drop_at <= d[0].start <= drop_at + timedelta(minutes=30) and d[0].severity == "critical"
    assert "still learning: 8.0 of 28 days" in d[0].message  # the alert says its thresholds rest on a short history
    assert not opened(out, "invalid") and not [a for a in out if a.kind == "gap"]


def test_a_small_pressure_drop_is_a_warning_and_one_with_a_flow_rise_is_a_burst():
    df = lumpy_district(2, lumps=False)
    drop_at = T0 + timedelta(days=1, hours=14)
    sel = (df.index >= drop_at) & (df.index < drop_at + timedelta(minutes=30))
    df.loc[sel, "pressure"] -= 0.4
    burst_at = T0 + timedelta(days=1, hours=2)
    df = with_burst(df, burst_at, 40, minutes=60)
    out = run(DetectionEngine(DetectorSettings(), TZ), df, recalibrate=False)
    d = opened(out, "pressure_drop")
    assert [(a.start, a.severity) for a in d] == [(drop_at + timedelta(minutes=1), "warning")]
    assert "supply side" in d[0].message
    assert [a.start for a in opened(out, "burst")] == [burst_at + timedelta(minutes=1)]


def test_step_calibration_round_trips_and_rejects_a_damaged_one():
    df = lumpy_district(8)
    t = epochs(df)
    from zoneinfo import ZoneInfo

    cal = calibrate(t, df["flow_rate"].to_numpy(), df["pressure"].to_numpy(), interval_s=60, tz=ZoneInfo(TZ), budget_per_30d=1.0,
                    flow_base_s=300, pressure_base_s=600, at=t[-1], min_burst_drop=0.05)
    cal.flat_run_s = {"pressure": 5400.0}
    assert StepCalibration.from_dict(cal.to_dict()) == cal
    assert all(x is not None and x >= 0.1 for x in cal.pressure_drop)
    with pytest.raises(ValueError):
        StepCalibration.from_dict({"flow_rel": [1.0]})
    # a file written before the thresholds were per day type: 24 hourly values, each serving both day types
    old = {"days": 28.0, "computed_at": 1.0, "flow_rel": [0.1 * h for h in range(24)], "burst_pressure": [0.05] * 24,
           "pressure_drop": [None] * 23 + [0.3]}
    back = StepCalibration.from_dict(old)
    assert back.flow_rel[14] == back.flow_rel[15] == pytest.approx(0.7) and back.pressure_drop[46:] == [0.3, 0.3]
    assert back.flat_run_s == {}  # nor the flat runs: the fixed flatline_minutes apply until the next recalibration


def test_forecast_tolerance_is_learned_from_how_far_the_readings_ran_from_the_forecasts():
    """A model that follows a district loosely (readings 20-45 % off for hours) gets a wider band after a
    recalibration; the configured tolerance stays the floor. Kept in the calibration (restart)."""
    from services.detector.rules.forecast import ForecastDeviationRule

    rng = np.random.default_rng(4)
    cfg = DetectorSettings()
    loose, close = ForecastDeviationRule("flow_rate", cfg), ForecastDeviationRule("flow_rate", cfg)
    t0 = 1_767_225_600.0
    before = {}
    for r, spread in ((loose, 0.25), (close, 0.03)):
        alarms_before = 0
        for h in range(20 * 24):  # 20 days of hourly forecasts of 100 m³/h
            issued = t0 + h * 3600
            r.offer(issued, [issued + 3600 * k for k in range(1, 7)], [100.0] * 6, False)
            off = 1 + rng.normal(0, spread)  # the model is off by this much for the whole hour
            for m in range(1, 61):
                c = r.check(issued + 60 * m, 100.0 * off + rng.normal(0, 1), None)
                alarms_before += bool(c and c.active and m == 60)
        assert r.tol_pct == cfg.forecast_tolerance_pct
        before[spread] = alarms_before
    assert before[0.25] > 10  # hours at 30 % off, each a candidate alarm with the fixed tolerance
    p = cfg.alarm_budget_per_30d * 0.25 * cfg.forecast_sustain_minutes / (30 * 1440)
    assert loose.learn(p, cfg.forecast_tolerance_pct) > 60 and loose.learned_days >= 19
    assert close.learn(p, cfg.forecast_tolerance_pct) == cfg.forecast_tolerance_pct  # the floor
    c = loose.check(t0 + 20 * 24 * 3600 - 10, 100.0 * (1 + 2 * loose.tol_pct / 100), None)  # twice the learned band off
    assert c is not None and "learned from" in c.message


def test_forecast_tolerance_is_learned_per_hour_where_the_forecast_is_looser():
    """Nights (small flows) run relatively further from any forecast than days: learned per local hour,
    the night's band is wider and the day's narrower than one band for all hours, so a day reading 40 %
    off is judged though it would be inside the single band, and a night 40 % off is not. Kept in the
    calibration file (restart)."""
    from zoneinfo import ZoneInfo

    from services.detector.rules.forecast import ForecastDeviationRule
    from services.detector.rules.steps import StepCalibration
    from services.detector.rules.thresholds import HourCells

    tz = ZoneInfo("Asia/Seoul")
    cells = HourCells(tz)
    rng = np.random.default_rng(5)
    cfg = DetectorSettings()
    r = ForecastDeviationRule("flow_rate", cfg)
    t0 = 1_767_193_200.0  # 2026-01-01 00:00 in Seoul
    for h in range(24 * 24):  # 24 days of hourly forecasts of 100 m³/h
        issued = t0 + h * 3600
        night = (cells(issued) >> 1) < 6
        r.offer(issued, [issued + 3600 * k for k in range(1, 7)], [100.0] * 6, False)
        off = 1 + rng.normal(0, 0.25 if night else 0.06)
        for m in range(1, 61):
            r.check(issued + 60 * m, 100.0 * off + rng.normal(0, 1), None, cells(issued + 60 * m))
    p = cfg.alarm_budget_per_30d * 0.25 * cfg.forecast_sustain_minutes / (30 * 1440)
    one = r.learn(p, cfg.forecast_tolerance_pct)
    assert r.tol_cells is None  # without a zone: one band
    assert r.learn(p, cfg.forecast_tolerance_pct, tz) == one
    night_tol, day_tol = r.tol_cells[2 * 3], r.tol_cells[2 * 14]
    assert night_tol > one > day_tol >= cfg.forecast_tolerance_pct, (night_tol, one, day_tol)
    t = t0 + 24 * 24 * 3600 + 14 * 3600  # a later day, 14:00
    r.offer(t - 60, [t - 60 + 3600 * k for k in range(1, 7)], [100.0] * 6, False)
    x = 100.0 * (1 + (day_tol + one) / 200)  # between the day's band and the single band
    c = r.check(t, x, None, cells(t))
    assert c is not None and c.active and "at hour 14" in c.message
    assert r.check(t, x, None, None) is None  # the single band: inside, nothing to say
    cal = StepCalibration(days=24.0, forecast_pct={"flow_rate": one}, forecast_cells={"flow_rate": r.tol_cells})
    assert StepCalibration.from_dict(cal.to_dict()).forecast_cells["flow_rate"] == r.tol_cells
    # read back at start: the engine serves the hourly tolerances of the file
    from services.detector.engine import DetectionEngine

    e = DetectionEngine(cfg, "Asia/Seoul")
    e.process_values("s1", "m1", t - 60, 100.0, 3.0)
    e._meter("s1", "m1").set_calibration(StepCalibration.from_dict(cal.to_dict()))
    restored = e._meter("s1", "m1").sig["flow_rate"].forecast
    assert restored.tol_cells == r.tol_cells and restored.tol_pct == one
    # and `flowwatch thresholds recalibrate` shows them per hour
    from services.detector.rules.steps import format_steps

    table = format_steps("s1", "m1", cal)
    assert "forecast tolerance % (flow_rate, weekday)" in table
    assert f"{r.tol_cells[2 * 3]:>6.1f}" in table.splitlines()[2 + 3]  # hour 03: the night's wider band
    cal.flat_run_s = {"pressure": 5400.0, "flow_rate": 60.0}
    assert "longest ordinary flat run: flow_rate 1 min, pressure 90 min" in format_steps("s1", "m1", cal)
