"""The detector at the meter's own interval (1 minute, 15 minutes, an hour) and with the meter's own
signals (flow only, pressure only, both): clean data raises nothing, a real burst, supply-side
pressure drop and flatline are still caught. ``DetectionEngine`` driven as ``flowwatch evaluate``
drives it (recalibrated whenever it says so, from the readings before the boundary)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.detector.engine import DetectionEngine
from shared.settings import DetectorSettings

TZ = "Asia/Seoul"
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
FLOW, PRES, BOTH = ("flow_rate",), ("pressure",), ("flow_rate", "pressure")
INTERVALS = (60, 900, 3600)
LABEL = {FLOW: "flow_rate", PRES: "pressure", BOTH: "both"}


def series(interval_s: int, days: float, seed: int = 5) -> pd.DataFrame:
    """A daily cycle (100 ± 30 m³/h, noise sigma 2; its steepest rise at 00:00 UTC) and a pressure
    that falls 0.02 bar per m³/h (a daily swing of 1.2 bar, noise 0.01): both clean."""
    rng = np.random.default_rng(seed)
    n = int(days * 86_400 / interval_s)
    idx = pd.date_range(START, periods=n, freq=f"{interval_s}s", tz="UTC", name="ts")
    hours = np.arange(n) * interval_s / 3600
    flow = 100 + 30 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 2, n)
    pres = 6.0 - 0.02 * flow + rng.normal(0, 0.01, n)
    return pd.DataFrame({"flow_rate": flow, "pressure": pres}, index=idx)


def drive(df: pd.DataFrame, interval_s: int, signals: tuple[str, ...], **kw) -> tuple[DetectionEngine, list]:
    e = DetectionEngine(DetectorSettings(**kw), TZ, meter_spec=lambda _m: (signals, interval_s))
    days = timedelta(days=e.cfg.threshold_days)
    out = []
    for t, f, p in zip(df.index, df["flow_rate"], df["pressure"], strict=True):
        out += e.process_values("s1", "m1", t.timestamp(), float(f) if "flow_rate" in signals else None,
                                float(p) if "pressure" in signals else None)
        for s, m, at in e.take_due():
            e.recalibrate(s, m, df[(df.index >= at - days) & (df.index < at)], at)
    return e, out


def opened(out, kind):
    return [a for a in out if a.kind == kind and a.state == "open"]


def days_for(interval_s: int) -> float:
    """Clean history before an event: long enough to calibrate the step thresholds (200 steps; an
    hourly meter needs 8.3 days), shorter at a minute (the test's time)."""
    return 10 if interval_s > 60 else 8


@pytest.mark.parametrize("interval_s", INTERVALS)
@pytest.mark.parametrize("signals", [FLOW, PRES, BOTH], ids=["flow", "pressure", "both"])
def test_clean_data_at_the_meters_interval_raises_no_alert(interval_s, signals):
    e, out = drive(series(interval_s, days_for(interval_s) + 2), interval_s, signals)
    assert out == [], [(a.kind, a.signal, a.state, a.start, a.message[:160]) for a in out]
    cal = e.calibration("s1", "m1")
    assert cal is not None and cal.days > 7  # the quiet days after calibration were judged by learned thresholds
    if "flow_rate" in signals:
        assert all(x is not None for x in cal.flow_rel)


@pytest.mark.parametrize("interval_s", INTERVALS)
@pytest.mark.parametrize("signals", [FLOW, BOTH], ids=["flow", "both"])
@pytest.mark.parametrize("hour", [1, 13], ids=["rising", "falling"])  # UTC: demand rising / falling fastest
def test_a_real_burst_is_caught_at_the_meters_interval(interval_s, signals, hour):
    df = series(interval_s, days_for(interval_s) + 1)
    t0 = START + timedelta(days=days_for(interval_s), hours=hour)
    burst = df.index >= t0
    df.loc[burst, "flow_rate"] += 40.0  # +40 % of the mean flow, sustained
    df.loc[burst, "pressure"] -= 0.4
    e, out = drive(df, interval_s, signals)
    b = opened(out, "burst")
    assert len(b) == 1, [(a.kind, a.state, a.start, a.message[:160]) for a in out]
    assert b[0].signal == LABEL[signals] and b[0].severity == "critical"
    assert t0 <= b[0].ts <= t0 + timedelta(seconds=2 * interval_s)  # on the step's second reading (level: median of 3)
    assert "learned from" in b[0].message  # judged by the calibrated thresholds
    assert [a.kind for a in opened(out, "burst") + opened(out, "pressure_drop")] == ["burst"]


@pytest.mark.parametrize("interval_s", [900, 3600])
@pytest.mark.parametrize("signals", [FLOW, BOTH], ids=["flow", "both"])
def test_before_calibration_a_coarse_meter_tells_a_burst_from_its_daily_ramp(interval_s, signals):
    # day 3: fixed thresholds (calibration_min_days past it); on the steepest morning rise the ramp
    # alone is a step of ~23 % (hourly)
    df = series(interval_s, 4)
    t0 = START + timedelta(days=3, hours=1)
    df.loc[df.index >= t0, "flow_rate"] += 40.0
    df.loc[df.index >= t0, "pressure"] -= 0.4
    _, out = drive(df, interval_s, signals, calibration_min_days=7)
    b = opened(out, "burst")
    assert len(b) == 1 and b[0].signal == LABEL[signals], [(a.kind, a.state, a.start, a.message[:160]) for a in out]
    assert t0 <= b[0].ts <= t0 + timedelta(seconds=2 * interval_s)
    assert "fixed defaults" in b[0].message and "a day earlier" in b[0].message
    # the same days without the burst: nothing (the raw 3-hour step of the ramp is over the fixed 26 % on flow alone),
    # with the fixed thresholds and with the default calibration (a 15-minute meter is calibrated after ~2 days)
    for kw in ({"calibration_min_days": 7}, {}):
        _, quiet = drive(series(interval_s, 4), interval_s, signals, **kw)
        assert quiet == [], (kw, [(a.kind, a.state, a.start, a.message[:160]) for a in quiet])
    # and the burst at the default calibration: caught as at once
    _, out = drive(df, interval_s, signals)
    b = opened(out, "burst")
    assert len(b) == 1 and t0 <= b[0].ts <= t0 + timedelta(seconds=2 * interval_s), [(a.kind, a.start, a.message[:160]) for a in out]


@pytest.mark.parametrize("interval_s", INTERVALS)
def test_a_supply_side_pressure_drop_is_caught_on_a_pressure_only_meter(interval_s):
    df = series(interval_s, days_for(interval_s) + 1)
    t0 = START + timedelta(days=days_for(interval_s), hours=1)  # pressure falling fastest with the demand
    df.loc[df.index >= t0, "pressure"] -= 1.0
    _, out = drive(df, interval_s, PRES)
    d = opened(out, "pressure_drop")
    assert len(d) == 1 and d[0].signal == "pressure", [(a.kind, a.state, a.start, a.message[:160]) for a in out]
    assert t0 <= d[0].ts <= t0 + timedelta(seconds=2 * interval_s)
    assert {a.kind for a in out} == {"pressure_drop"}


@pytest.mark.parametrize("interval_s", INTERVALS)
@pytest.mark.parametrize("signals", [FLOW, PRES, BOTH], ids=["flow", "pressure", "both"])
def test_a_real_flatline_is_caught_at_the_meters_interval_and_closes_when_it_moves(interval_s, signals):
    df = series(interval_s, 2)
    stuck = signals[0]
    n = max(120 * 60 // interval_s, 8)  # two hours or eight readings, whichever is longer
    i0 = len(df) // 2
    df.iloc[i0:i0 + n, df.columns.get_loc(stuck)] = float(df[stuck].iloc[i0])
    _, out = drive(df, interval_s, signals, flatline_minutes=60)
    f = [a for a in out if a.kind == "flatline"]
    assert [(a.state, a.signal) for a in f] == [("open", stuck), ("closed", stuck)], [(a.kind, a.signal, a.state) for a in out]
    need = max(60 * 60 // interval_s, 4)  # flatline_minutes, and at least flatline_min_readings readings
    assert f[0].start == f[0].ts == df.index[i0 + need - 1]  # opens with the reading that completes the run
    assert f[1].end == df.index[i0 + n]  # the first reading that moves
    assert {a.kind for a in out} == {"flatline"}


def test_weekend_ramps_of_an_hourly_meter_are_learned_per_day_type():
    """74 days of hourly readings of a simulated district (``flowwatch simulate``, wntr's ky4 layout,
    smooth demand, seed 1651, resampled to hourly means; tests/data): its weekend pressure falls
    later and further in the late morning than on weekdays. With one centre for both day types each
    weekend raised a false pressure_drop (16 in the 60 days after learning); with a centre per cell,
    only the first weekend after learning does, before a weekend cell holds five days of its own."""
    df = pd.read_csv(Path(__file__).parent / "data" / "ky4_hourly_quiet.csv.gz", parse_dates=["timestamp"], index_col="timestamp")
    e, out = drive(df, 3600, BOTH)
    learned = df.index[0] + timedelta(days=14)
    false = [a.start for a in out if a.kind == "pressure_drop" and a.state == "open" and a.start >= learned]
    assert len(false) <= 1 and all(t < learned + timedelta(days=7) for t in false), false
    cal = e.calibration("s1", "m1")
    assert cal.pressure_drop[2 * 11 + 1] > cal.pressure_drop[2 * 11]  # 11:00 local: the weekend's own, higher threshold


def test_a_reading_is_compared_with_the_forecast_of_its_own_bin():
    """A forecast is a mean per bin [T - step, T); a reading belongs to the bin it starts. A 15-minute
    meter's reading at 00:15 is judged against the bin ending 00:30 (it was against the bin before,
    the ramp between them made a deviation); an hourly meter's one-step forecast covers the reading
    already seen when it was issued, so it judges none."""
    from services.detector.rules.forecast import ForecastDeviationRule

    t0 = START.timestamp()
    q = ForecastDeviationRule("flow_rate", DetectorSettings(), 900)
    q.offer(t0, [t0 + 900 * k for k in range(1, 5)], [100.0, 200.0, 300.0, 400.0], False)  # a steep ramp
    for k, reading in ((1, 200.0), (2, 300.0), (3, 400.0)):
        c = q.check(t0 + 900 * k, reading, None)
        assert c is None or not c.active, (k, c)  # on its own bin's forecast: no deviation
    assert q.check(t0 + 900 * 4, 400.0, None) is None  # the next forecast's first bin
    c = q.check(t0 + 900 * 2, 200.0, None)  # a reading a bin behind the forecast's ramp deviates
    assert c is not None and c.active
    h = ForecastDeviationRule("flow_rate", DetectorSettings(), 3600)
    h.offer(t0, [t0 + 3600], [100.0], False)
    assert h.check(t0 + 3600, 500.0, None) is None


def test_a_meter_that_reads_less_often_than_configured_has_no_gap_storm_and_keeps_its_nights():
    """Configured at 5 minutes, read every 15 (a logger set otherwise, or a file whose cadence changes).
    Each step was a gap, and no night had the readings it needed (80 % of 24 five-minute readings):
    the night-flow rule never learned. Now the gap rule takes the meter's own cadence (the median of its
    last 16 steps, after 8), and a night counts its quarter hours, not its readings. A real hole of 3
    hours is still a gap; the same meter configured at 15 minutes records the same nights."""
    df = series(900, 9)
    df = df.drop(df.index[400:412])  # 3 hours missing on day 5
    e, out = drive(df, 300, FLOW)
    gaps = [a for a in out if a.kind == "gap"]
    assert len(gaps) <= 8 and all(a.start < df.index[9].to_pydatetime() for a in gaps[:-1]), [a.start for a in gaps]
    hole = gaps[-1]
    assert hole.start == df.index[399].to_pydatetime() and "lately every 15" in hole.message, hole.message
    nights = e.take_night_flows()
    same, _ = drive(df, 900, FLOW)
    assert len(nights) >= 8 and [(n.day, n.value) for n in nights] == [(n.day, n.value) for n in same.take_night_flows()]


@pytest.mark.parametrize("interval_s", [900, 3600])
def test_bands_are_learned_at_an_hour_and_on_a_meters_first_weekends(interval_s):
    """An hourly meter has 20 weekday and 8 weekend readings per hour in 28 days, fewer than a band
    needs (30): its bands stayed static for good and a flow 30 m³/h over the day's (a leak on a
    Saturday) raised nothing. Now such a cell takes its spread from the nearest hours of its day
    type around its own median. The same for a 15-minute meter's weekend cells in its first weeks."""
    df = series(interval_s, 21)
    t0 = START + timedelta(days=19, hours=9)  # Saturday 24 January, 18:00 local
    leak = (df.index >= t0) & (df.index < t0 + timedelta(hours=8))
    df.loc[leak, "flow_rate"] += 30.0
    e, out = drive(df, interval_s, FLOW)
    th = opened(out, "threshold")
    assert len(th) == 1 and t0 <= th[0].start < t0 + timedelta(hours=4), [(a.kind, a.state, a.start, a.message[:160]) for a in out]
    assert "learned from" in th[0].message and "weekend" in th[0].message
    _, quiet = drive(series(interval_s, 21), interval_s, FLOW)
    assert opened(quiet, "threshold") == [], [(a.start, a.message[:160]) for a in opened(quiet, "threshold")]
