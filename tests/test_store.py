"""The one store suite, run against both adapters on real servers (SQLite file, influxd)."""

import logging
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from shared.messages import Anomaly, Band, Forecast, Reading, Thresholds
from shared.store import NightFlow, StoreUnavailable, WriteResult
from shared.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def readings(n, site="s1", meter="m1", start=T0):
    return [Reading(site=site, meter=meter, ts=start + timedelta(minutes=i), seq=i, flow_rate=10.0 + i, pressure=3.0,
                    quality=("simulated",) if i % 2 else (), source="test") for i in range(n)]


def test_write_and_read_readings(store):
    assert store.write_readings(readings(10)) == WriteResult(inserted=10)
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
    assert store.write_readings(rs) == WriteResult(identical=5)
    assert store.write_readings(rs[2:3]) == WriteResult(identical=1)
    df = store.read_readings("s1", "m1", T0, T0 + timedelta(days=1))
    assert len(df) == 5 and df.index.is_unique
    assert store.read_conflicts("s1", "m1", T0, T0 + timedelta(days=1)) == []


def test_a_different_reading_for_a_stored_minute_is_kept_aside_not_stored(store, caplog):
    """Identity is (site, meter, ts): a second reading of a stored minute with other values never replaces it."""
    caplog.set_level(logging.DEBUG, logger="shared.store.base")
    rs = readings(5)
    store.write_readings(rs)
    other = rs[2].model_copy(update={"flow_rate": 99.5, "source": "replay", "seq": 42})
    missing = rs[3].model_copy(update={"pressure": None, "quality": ("pressure_missing",)})
    same_other_source = rs[4].model_copy(update={"source": "import", "seq": 7})  # values equal: a redelivery
    new = readings(7)[5:]
    got = store.write_readings([other, missing, same_other_source, *new])
    assert got == WriteResult(inserted=2, identical=1, conflicting=2) and got.total == 5
    df = store.read_readings("s1", "m1", T0, T0 + timedelta(days=1))
    assert df["flow_rate"].tolist() == [10.0 + i for i in range(7)]  # the stored values stayed
    assert df["pressure"].tolist() == [3.0] * 7 and df["source"].iloc[4] == "test"
    cs = store.read_conflicts("s1", "m1", T0, T0 + timedelta(days=1))
    assert [(c.ts, c.flow_rate, c.stored_flow_rate, c.pressure, c.stored_pressure, c.quality, c.stored_quality) for c in cs] == [
        (rs[2].ts, 99.5, 12.0, 3.0, 3.0, "", ""),
        (rs[3].ts, 13.0, 13.0, None, 3.0, "pressure_missing", "simulated"),
    ]
    assert (cs[0].source, cs[0].seq, cs[0].site, cs[0].meter) == ("replay", 42, "s1", "m1")
    assert abs((cs[0].seen_at - datetime.now(UTC)).total_seconds()) < 60
    warnings = [r for r in caplog.records if "reading_conflicts" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING", "DEBUG"]  # once per meter, then debug
    # the same conflicting reading again: counted again, recorded once
    assert store.write_readings([other]) == WriteResult(conflicting=1)
    assert len(store.read_conflicts("s1", "m1", T0, T0 + timedelta(days=1))) == 2
    assert store.read_conflicts("s1", "m1", T0, rs[2].ts) == []  # end exclusive


def test_the_first_of_two_readings_of_one_minute_in_a_batch_wins(store):
    a, b = readings(1)[0], readings(1)[0].model_copy(update={"flow_rate": 1.5})
    assert store.write_readings([a, a, b]) == WriteResult(inserted=1, identical=1, conflicting=1)
    assert store.read_readings("s1", "m1", T0, T0 + timedelta(days=1))["flow_rate"].tolist() == [10.0]
    assert [c.flow_rate for c in store.read_conflicts("s1", "m1", T0, T0 + timedelta(days=1))] == [1.5]


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_a_reimport_is_identical_and_an_overlapping_one_conflicts(store):
    n = 3000
    idx = pd.date_range(T0, periods=n, freq="1min", tz="UTC", name="ts")
    flow = np.linspace(1, 2, n)
    flow[7] = np.nan
    df = pd.DataFrame({"flow_rate": flow, "pressure": 3.0}, index=idx)
    assert store.write_reading_frame("s1", "m1", df) == WriteResult(inserted=n)
    assert store.write_reading_frame("s1", "m1", df) == WriteResult(identical=n)
    # a second file: the last 1000 minutes again, 10 of them with other values, and 500 new minutes
    idx2 = pd.date_range(T0 + timedelta(minutes=n - 1000), periods=1500, freq="1min", tz="UTC", name="ts")
    df2 = pd.DataFrame({"flow_rate": np.r_[flow[-1000:], np.full(500, 5.0)], "pressure": 3.0}, index=idx2)
    df2.iloc[100:110, 1] = 2.5
    assert store.write_reading_frame("s1", "m1", df2) == WriteResult(inserted=500, identical=990, conflicting=10)
    back = store.read_readings("s1", "m1", T0, T0 + timedelta(days=10))
    assert len(back) == n + 500 and np.isnan(back["flow_rate"].iloc[7]) and (back["pressure"] == 3.0).all()
    cs = store.read_conflicts("s1", "m1", T0, T0 + timedelta(days=10))
    assert [c.ts for c in cs] == [t.to_pydatetime() for t in idx2[100:110]]
    assert {(c.pressure, c.stored_pressure, c.source) for c in cs} == {(2.5, 3.0, "import")}
    # a sparse batch (two minutes a month apart) is compared key by key
    sparse = [readings(1)[0].model_copy(update={"flow_rate": 7.0}), readings(1, start=T0 + timedelta(days=30))[0]]
    assert store.write_readings(sparse) == WriteResult(inserted=1, conflicting=1)


def test_write_result_counts_rows_for_callers_that_only_count():
    total = 0
    total += WriteResult(inserted=3, identical=2, conflicting=1)
    assert total == 6 and sum([WriteResult(1), WriteResult(0, 2)]) == 3
    assert WriteResult(1, 2, 3) + WriteResult(1, 1, 1) == WriteResult(2, 3, 4)


def test_missing_values_round_trip(store):
    r = Reading(site="s1", meter="m1", ts=T0, seq=1, flow_rate=None, pressure=2.5, quality=("flow_rate_missing",))
    store.write_readings([r])
    df = store.read_readings("s1", "m1", T0, T0 + timedelta(minutes=1))
    assert np.isnan(df["flow_rate"].iloc[0]) and df["pressure"].iloc[0] == 2.5


def test_reading_columns_are_the_records_columns(store):
    """The detector's recalibration reads numpy columns straight from the rows: the same values as the
    records path, NaN where missing, [start, end), and empty arrays for a meter with none."""
    from shared.store.base import reading_columns

    rs = readings(30)
    rs[3] = rs[3].model_copy(update={"flow_rate": None})
    rs[7] = rs[7].model_copy(update={"pressure": None})
    store.write_readings(rs)
    lo, hi = T0 + timedelta(minutes=2), T0 + timedelta(minutes=20)
    got = store.read_reading_columns("s1", "m1", lo, hi)
    want = reading_columns(store.read_reading_records("s1", "m1", lo, hi))[:3]
    assert len(got[0]) == 18 and got[0][0] == lo.timestamp()
    assert np.isnan(got[1][1]) and np.isnan(got[2][5])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float64 and np.array_equal(g, w, equal_nan=True)
    assert [len(c) for c in store.read_reading_columns("s1", "nope", lo, hi)] == [0, 0, 0]


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
    assert store.write_reading_frame("s1", "m1", df) == WriteResult(inserted=n)
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
    assert all(n.day_mean is None for n in got)
    # the day's mean flow beside the night (the demand check of night_flow): kept as written, None or not
    store.write_night_flow([NightFlow("s1", "m1", date(2026, 3, 3), items[2].ts, 4.0, 11.5)])
    got = store.read_night_flow("s1", "m1", date(2026, 3, 2), date(2026, 3, 5))
    assert [(n.value, n.day_mean) for n in got] == [(3.0, None), (4.0, 11.5), (5.0, None)]


def test_a_database_from_before_the_day_mean_gets_the_column(tmp_path):
    """A store file created before night_flow had day_mean: opened, upgraded in place, its nights kept."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE night_flow (site TEXT NOT NULL, meter TEXT NOT NULL, day TEXT NOT NULL, ts INTEGER NOT NULL, "
               "value REAL NOT NULL, PRIMARY KEY (site, meter, day)) WITHOUT ROWID")
    db.execute("INSERT INTO night_flow VALUES ('s1', 'm1', '2026-03-02', 1772380800, 3.0)")
    db.commit()
    db.close()
    s = SqliteStore(path)
    try:
        s.write_night_flow([NightFlow("s1", "m1", date(2026, 3, 3), T0, 4.0, 11.5)])
        got = s.read_night_flow("s1", "m1", date(2026, 3, 1), date(2026, 3, 5))
        assert [(n.value, n.day_mean) for n in got] == [(3.0, None), (4.0, 11.5)]
    finally:
        s.close()


def test_purge(store):
    store.write_readings(readings(10))
    store.write_readings([readings(10)[i].model_copy(update={"flow_rate": 0.0}) for i in (2, 6)])  # two conflicts
    store.purge(T0 + timedelta(minutes=4))
    df = store.read_readings("s1", "m1", T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert df["seq"].tolist() == [4, 5, 6, 7, 8, 9]
    assert [c.ts for c in store.read_conflicts("s1", "m1", T0 - timedelta(days=1), T0 + timedelta(days=1))] == [T0 + timedelta(minutes=6)]


def test_first_reading_time(store):
    assert store.first_reading_time() is None
    store.write_readings(readings(3, meter="m2", start=T0 + timedelta(days=2)) + readings(3, meter="m1", start=T0 + timedelta(days=1)))
    assert store.first_reading_time() == T0 + timedelta(days=1)


def test_sqlite_purge_deletes_in_batches_and_keeps_the_newest_thresholds(tmp_path):
    """Retention: at most purge_batch rows per transaction, so the detector's writes never wait long."""
    s = SqliteStore(tmp_path / "p.db")
    s.purge_batch = 100
    s.write_readings(readings(1000) + readings(1000, meter="m2"))
    s.write_readings([readings(1)[0].model_copy(update={"flow_rate": 0.0})])  # a conflict at T0
    bands = (Band(hour=0, daytype="weekday", lower=1.0, upper=2.0),)
    for d in (0, 1):
        s.write_thresholds(Thresholds(site="s1", meter="m1", signal="flow_rate", computed_at=T0 + timedelta(days=d), method="learned", bands=bands))
    s.write_anomalies([Anomaly(site="s1", meter="m1", kind="gap", signal="flow_rate", severity="warning", state="open",
                               start=T0 + timedelta(minutes=i), ts=T0 + timedelta(minutes=i)) for i in range(0, 1000, 4)])
    statements: list[str] = []
    s._db.set_trace_callback(statements.append)
    cut = T0 + timedelta(minutes=750)
    # readings of both meters, the conflict, the anomalies before 12:30, the older thresholds
    assert s.purge(cut) == 2 * 750 + 1 + 188 + 1
    s._db.set_trace_callback(None)
    assert statements.count("COMMIT") >= 15  # 7.5 batches per meter's readings, one per other table at least
    for m in ("m1", "m2"):
        df = s.read_readings("s1", m, T0 - timedelta(days=1), T0 + timedelta(days=2))
        assert df.index[0] == pd.Timestamp(cut) and len(df) == 250
    assert s.read_conflicts("s1", "m1", T0, T0 + timedelta(days=2)) == []
    assert len(s.read_anomalies("s1", "m1", T0, T0 + timedelta(days=2))) == 62
    # all thresholds are older than the cut; the newest per signal stays (the detector needs bands)
    s.purge(T0 + timedelta(days=30))
    assert s.latest_thresholds("s1", "m1", "flow_rate").computed_at == T0 + timedelta(days=1)
    assert s._query("SELECT COUNT(*) FROM thresholds", ())[0][0] == 1
    s.close()


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
    assert s.write_readings(readings(100)).inserted == 100
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


@pytest.mark.parametrize("retries", [0, 2])
def test_influx_retries_setting_bounds_the_wait(retries):
    """store.influxdb.retries is what the adapter does: retries+1 attempts, backoff 0.2 s doubling, then StoreUnavailable."""
    import socket

    from shared.settings import InfluxSettings
    from shared.store.influx import InfluxStore

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    st = InfluxStore(InfluxSettings(url=f"http://127.0.0.1:{port}", retries=retries, create_database=False))
    attempts = []
    real = st.http.request
    st.http.request = lambda *a, **kw: attempts.append(1) or real(*a, **kw)
    t = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"after {retries + 1} attempt"):
        st.write_readings(readings(1))
    waited = time.monotonic() - t
    assert len(attempts) == retries + 1
    assert 0.2 * (2**retries - 1) <= waited < 0.2 * (2**retries - 1) + 2
    st.close()


def test_open_store_passes_retries_and_retention(influxd):
    import uuid

    from shared.settings import Settings
    from shared.store import open_store

    db = f"r_{uuid.uuid4().hex[:10]}"
    settings = Settings(store={"backend": "influxdb", "retention_days": 30, "influxdb": {"url": influxd.url, "database": db, "retries": 3}})
    with open_store(settings) as st:
        assert st.settings.retries == 3
        rp = {v[0]: v for s in st._select(f'SHOW RETENTION POLICIES ON "{db}"') for v in s["values"]}
        assert rp["autogen"][1] == "720h0m0s"  # the server drops data older than store.retention_days
    with open_store(settings.model_copy(update={"store": settings.store.model_copy(update={"retention_days": 400})})) as st:
        rp = {v[0]: v for s in st._select(f'SHOW RETENTION POLICIES ON "{db}"') for v in s["values"]}
        assert rp["autogen"][1] == "9600h0m0s"  # changed at the next start


def test_extra_values_are_stored_with_their_reading(store):
    """Reading.extra (a register map's totalizer, battery, status word...) is stored and read back per
    name; a reading without extra values adds none; a redelivery keeps what is stored."""
    rs = [Reading(site="s1", meter="m1", ts=T0 + timedelta(minutes=i), seq=i, flow_rate=10.0, pressure=None,
                  extra={"totalizer": 1000.0 + i, "battery": 3.6} if i != 1 else None, source="modbus-rtu") for i in range(3)]
    assert store.write_readings(rs) == WriteResult(inserted=3)
    ex = store.read_extra("s1", "m1", T0, T0 + timedelta(minutes=3))
    assert sorted(ex.columns) == ["battery", "totalizer"] and str(ex.index.tz) == "UTC"
    assert ex.index.tolist() == [pd.Timestamp(T0), pd.Timestamp(T0 + timedelta(minutes=2))]
    assert ex["totalizer"].tolist() == [1000.0, 1002.0] and ex["battery"].tolist() == [3.6, 3.6]
    assert store.write_readings(rs[:1]) == WriteResult(identical=1)
    assert store.read_extra("s1", "m1", T0, T0 + timedelta(minutes=3))["totalizer"].tolist() == [1000.0, 1002.0]
    df = store.read_readings("s1", "m1", T0, T0 + timedelta(minutes=3))
    assert df["flow_rate"].tolist() == [10.0] * 3 and df["pressure"].isna().all()
    assert store.read_extra("s1", "other", T0, T0 + timedelta(minutes=3)).empty
