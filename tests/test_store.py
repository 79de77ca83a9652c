"""The one store suite, run against both adapters on real servers (SQLite file, influxd)."""

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from shared.messages import Anomaly, Band, Forecast, Reading, Thresholds
from shared.store import NightFlow
from shared.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def readings(n, site="s1", meter="m1", start=T0):
    return [Reading(site=site, meter=meter, ts=start + timedelta(minutes=i), seq=i, flow_rate=10.0 + i, pressure=3.0,
                    quality=("simulated",) if i % 2 else (), source="test") for i in range(n)]


def test_write_and_read_readings(store):
    assert store.write_readings(readings(10)) == 10
    df = store.read_readings("s1", "m1", T0, T0 + timedelta(minutes=10))
    assert len(df) == 10
    assert df.index[0] == pd.Timestamp(T0) and str(df.index.tz) == "UTC"
    assert df["flow_rate"].tolist() == [10.0 + i for i in range(10)]
    assert df["seq"].tolist() == list(range(10))
    assert df["quality"].iloc[1] == "simulated" and df["quality"].iloc[0] == ""
    # end is exclusive, start inclusive
    assert len(store.read_readings("s1", "m1", T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))) == 3


def test_redelivery_is_idempotent(store):
    rs = readings(5)
    store.write_readings(rs)
    store.write_readings(rs)
    store.write_readings(rs[2:3])
    df = store.read_readings("s1", "m1", T0, T0 + timedelta(days=1))
    assert len(df) == 5 and df.index.is_unique


def test_missing_values_round_trip(store):
    r = Reading(site="s1", meter="m1", ts=T0, seq=1, flow_rate=None, pressure=2.5, quality=("flow_rate_missing",))
    store.write_readings([r])
    df = store.read_readings("s1", "m1", T0, T0 + timedelta(minutes=1))
    assert np.isnan(df["flow_rate"].iloc[0]) and df["pressure"].iloc[0] == 2.5


def test_meters_are_separate(store):
    store.write_readings(readings(3, meter="m1") + readings(4, meter="m2"))
    assert len(store.read_readings("s1", "m2", T0, T0 + timedelta(days=1))) == 4
    assert store.meters() == [("s1", "m1"), ("s1", "m2")]
    assert store.last_reading_time("s1", "m2") == T0 + timedelta(minutes=3)
    assert store.last_reading_time("s1", "nope") is None


def test_bulk_frame(store):
    n = 5000
    idx = pd.date_range(T0, periods=n, freq="1min", tz="UTC", name="ts")
    flow = np.linspace(1, 2, n)
    flow[7] = np.nan
    df = pd.DataFrame({"flow_rate": flow, "pressure": 3.0}, index=idx)
    assert store.write_reading_frame("s1", "m1", df) == n
    back = store.read_readings("s1", "m1", T0, T0 + timedelta(days=10))
    assert len(back) == n
    assert np.isnan(back["flow_rate"].iloc[7])
    assert back["flow_rate"].iloc[100] == pytest.approx(flow[100], rel=1e-12)


def test_anomaly_update_overwrites(store):
    a = Anomaly(site="s1", meter="m1", kind="burst", signal="both", severity="critical", state="open", start=T0, ts=T0, value=50.0, message="burst")
    store.write_anomalies([a])
    closed = a.model_copy(update={"state": "closed", "end": T0 + timedelta(minutes=9), "ts": T0 + timedelta(minutes=9)})
    store.write_anomalies([closed])
    df = store.read_anomalies("s1", "m1", T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert len(df) == 1
    row = df.iloc[0]
    assert row["state"] == "closed" and row["end"] == pd.Timestamp(T0 + timedelta(minutes=9))
    assert row["kind"] == "burst" and row["message"] == "burst"


def test_forecasts(store):
    f = Forecast(site="s1", meter="m1", signal="flow_rate", issued_at=T0, step_minutes=10, values=(1.0, 2.0, 3.0), model="seasonal-naive")
    store.write_forecast(f)
    store.write_forecast(f)
    g = f.model_copy(update={"signal": "pressure", "values": (3.0, 3.1, 3.2)})
    store.write_forecast(g)
    df = store.read_forecasts("s1", "m1", T0, T0 + timedelta(hours=2))
    assert len(df) == 6
    flow = store.read_forecasts("s1", "m1", T0, T0 + timedelta(hours=2), signal="flow_rate")
    assert flow["value"].tolist() == [1.0, 2.0, 3.0]
    assert flow["target_time"].iloc[0] == pd.Timestamp(T0 + timedelta(minutes=10))
    assert set(flow["model"]) == {"seasonal-naive"} and flow["issued_at"].iloc[0] == pd.Timestamp(T0)


def test_thresholds_latest(store):
    assert store.latest_thresholds("s1", "m1", "flow_rate") is None
    bands = (Band(hour=0, daytype="weekday", lower=1.0, upper=2.0),)
    for i in range(3):
        store.write_thresholds(Thresholds(site="s1", meter="m1", signal="flow_rate", computed_at=T0 + timedelta(days=i),
                                          method="learned", bands=bands, sample_days=i))
    t = store.latest_thresholds("s1", "m1", "flow_rate")
    assert t.sample_days == 2 and t.bands == bands
    assert store.latest_thresholds("s1", "m1", "pressure") is None


def test_night_flow(store):
    items = [NightFlow("s1", "m1", date(2026, 3, d), T0 + timedelta(days=d - 1, hours=-7), 1.0 + d) for d in range(1, 6)]
    store.write_night_flow(items)
    store.write_night_flow(items[:1])
    got = store.read_night_flow("s1", "m1", date(2026, 3, 2), date(2026, 3, 5))
    assert [n.day.day for n in got] == [2, 3, 4] and got[0].value == 3.0


def test_purge(store):
    store.write_readings(readings(10))
    store.purge(T0 + timedelta(minutes=4))
    df = store.read_readings("s1", "m1", T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert df["seq"].tolist() == [4, 5, 6, 7, 8, 9]


def test_empty_reads(store):
    assert store.read_readings("x", "y", T0, T0 + timedelta(days=1)).empty
    assert store.read_anomalies("x", "y", T0, T0 + timedelta(days=1)).empty
    assert store.read_forecasts("x", "y", T0, T0 + timedelta(days=1)).empty


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT OR IGNORE INTO meters (site, meter) VALUES ('other', 'x')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_sqlite_waits_for_external_lock(tmp_path, caplog):
    """A DB browser holding the write lock for a few seconds: no error, no loss (seed 001)."""
    path = tmp_path / "locked.db"
    s = SqliteStore(path, synchronous="NORMAL")
    s.settings.busy_timeout_ms = 200  # small, so the retry loop (not only busy_timeout) is exercised
    s._db.execute("PRAGMA busy_timeout=200")
    p = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), "3"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    t = time.monotonic()
    assert s.write_readings(readings(100)) == 100
    waited = time.monotonic() - t
    p.wait(10)
    assert waited > 1.5, "the write should have waited for the lock"
    assert len(s.read_readings("s1", "m1", T0, T0 + timedelta(days=1))) == 100
    assert any("locked by another process" in r.message for r in caplog.records)
    s.close()


def test_sqlite_gives_up_clearly(tmp_path):
    from shared.store import StoreUnavailable

    path = tmp_path / "locked.db"
    s = SqliteStore(path)
    s.settings.lock_retry_s = 0.5
    s._db.execute("PRAGMA busy_timeout=100")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="DB browser"):
        s.write_readings(readings(1))
    other.execute("ROLLBACK")
    s.close()


def test_records_without_pandas(store):
    rs = readings(3)
    store.write_readings(rs)
    back = store.read_reading_records("s1", "m1", T0, T0 + timedelta(days=1))
    assert [(r.ts, r.seq, r.flow_rate, r.quality) for r in back] == [(r.ts, r.seq, r.flow_rate, r.quality) for r in rs]
    a = Anomaly(site="s1", meter="m1", kind="gap", signal="flow_rate", severity="warning", state="open", start=T0, ts=T0)
    store.write_anomalies([a])
    got = store.read_anomaly_records("s1", "m1", T0, T0 + timedelta(days=1))
    assert len(got) == 1 and got[0].kind == "gap" and got[0].end is None and got[0].start == T0
    store.write_forecast(Forecast(site="s1", meter="m1", signal="pressure", issued_at=T0, step_minutes=10, values=(3.0,), model="v1"))
    assert store.read_forecast_points("s1", "m1", T0, T0 + timedelta(hours=1)) == [
        ("pressure", T0, T0 + timedelta(minutes=10), 3.0, "v1")]
