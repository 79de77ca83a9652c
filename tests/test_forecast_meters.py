"""Several meters, each with its own signals and interval, through a real Mosquitto and SQLite:
forecasts per meter (a flow-only 15-minute meter gets 15-minute flow forecasts only, and no failure),
and every step of them in each meter's forecast.txt (issue 15)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.exporter import protocol
from services.forecaster.predictor import ModelCache
from services.forecaster.window import ReadingWindow
from shared import features
from shared.messages import Reading
from shared.settings import RangeLimits, Settings
from shared.store.sqlite import SqliteStore
from tests.exporter_check import verify
from tests.harness import wait_for

H10 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 10:00 in Seoul
M = timedelta(minutes=1)


def meters_settings(settings: Settings, site: str, **kw) -> Settings:
    return Settings(data_dir=settings.data_dir, mqtt=settings.mqtt.model_dump(), site=site, meters=[
        {"id": "m1"}, {"id": "m2", "signals": ["flow_rate"], "interval_s": 900}], **kw)


def test_bins_follow_the_interval_and_divide_the_horizon():
    s = Settings(meters=[{"id": "a"}, {"id": "b", "interval_s": 900}, {"id": "c", "interval_s": 3600},
                         {"id": "d", "interval_s": 1}, {"id": "e", "interval_s": 1500}])
    steps = {m: features.resolution(s, m).step_minutes for m in "abcde"}
    assert steps == {"a": 10, "b": 15, "c": 60, "d": 10, "e": 30}  # 25 min -> 30: a divisor of the hour
    assert {m: features.resolution(s, m).horizon_steps for m in "abcde"} == {"a": 6, "b": 4, "c": 1, "d": 6, "e": 2}
    assert features.resolution(s, "c").window_steps == 6  # the model window is the same 6 hours


def test_model_cache_is_bounded():
    cache = ModelCache(2)
    loaded = []

    class Fake:
        def __init__(self, path, step, threads):
            loaded.append(path)
            self.name = str(path)

    import services.forecaster.predictor as pred

    real, pred.ModelPredictor = pred.ModelPredictor, Fake
    try:
        for p in ["a", "b", "a", "c", "a", "b"]:
            cache.get(p, 10)
    finally:
        pred.ModelPredictor = real
    assert len(cache) == 2 and loaded == ["a", "b", "c", "b"] and cache.evictions == 2


def test_window_counts_a_redelivered_reading_once_and_stays_small():
    w = ReadingWindow(10, features.history_steps(10), 6, RangeLimits())
    t0 = int(H10.timestamp())
    for k in range(30):
        w.add(t0 + 60 * k, {"flow_rate": 10.0 + (k >= 10) * 10, "pressure": 3.0})
    w.add(t0 + 60 * 12, {"flow_rate": 1000.0, "pressure": 3.0})  # the same timestamp again: counted once
    v = w.window("flow_rate", t0 + 1800)
    assert v[-3:].tolist() == [10.0, 20.0, 20.0]
    assert sum(a.nbytes for d in (w._label, w._sum, w._count) for a in d.values()) < 60_000


def _publish(bus, site: str, meter: str, start: datetime, n: int, every: timedelta, flow: bool = True, pressure: bool = True):
    for k in range(n):
        ts = start + k * every
        r = Reading(site=site, meter=meter, ts=ts, seq=k, flow_rate=50.0 + k % 5 if flow else None,
                    pressure=3.5 if pressure else None, source="test")
        bus.publish(bus.topics.reading(site, meter), r, qos=1).wait_for_publish(5)


def test_forecasts_per_meter_through_the_broker(tmp_path, broker, settings):
    from services.exporter.service import ExporterService
    from services.forecaster.service import ForecasterService
    from shared.bus import Bus

    site = f"s{uuid.uuid4().hex[:8]}"  # the session broker keeps retained messages and sessions
    s = meters_settings(settings, site)
    fc, ex = ForecasterService(s), ExporterService(s)
    fc.start_in_thread()
    ex.start_in_thread()
    pub = Bus(s.mqtt, "test-pub", persistent=False)
    assert pub.connect(10)
    st = SqliteStore(s.path(s.store.sqlite.path))
    try:
        assert fc.ready.wait(30) and ex.ready.wait(30)
        _publish(pub, site, "m1", H10 - 2 * M, 64, M)  # 09:58 .. 11:01: crosses 10:00 and 11:00
        _publish(pub, site, "m2", H10 - 15 * M, 6, 15 * M, pressure=False)  # 09:45 .. 11:00, flow only
        _publish(pub, site, "m3", H10 - 2 * M, 4, M)  # a meter not configured: both signals, default bins

        def forecasts(meter):
            return st.read_forecasts(site, meter, H10, H10 + timedelta(hours=3))

        assert wait_for(lambda: len(forecasts("m1")) >= 24 and len(forecasts("m2")) >= 8 and len(forecasts("m3")) >= 12, 60)
        f1, f2, f3 = forecasts("m1"), forecasts("m2"), forecasts("m3")
        assert set(f1["signal"]) == {"flow_rate", "pressure"} and set(f3["signal"]) == {"flow_rate", "pressure"}
        assert set(f2["signal"]) == {"flow_rate"}  # no pressure forecast for the flow-only meter
        issued = f2[f2["issued_at"] == H10]
        assert [t.to_pydatetime() - H10 for t in issued["target_time"]] == [15 * M, 30 * M, 45 * M, 60 * M]
        assert len(f1[(f1["issued_at"] == H10) & (f1["signal"] == "flow_rate")]) == 6
        assert set(f2["model"]) == {"seasonal-naive"}
        for k in ("model_load_errors", "forecasts_skipped", "dead_lettered"):
            assert fc.counters.get(k) == 0, k

        # forecast.txt per meter (several meters configured: <out_dir>/<site>/<meter>/), every step
        out = s.path(s.exporter.out_dir)

        def rows(meter):
            p = out / site / meter / "forecast.txt"
            if not p.exists():
                return None
            data = p.read_bytes()
            assert verify(data)
            lines = protocol.check(data)
            return lines if lines[2].startswith("ISSUED,2026-03-02T11:00:00+09:00") else None

        assert wait_for(lambda: rows("m1") is not None and rows("m2") is not None, 30)
        r2 = [ln.split(",") for ln in rows("m2") if ln.startswith("ROW,")]
        assert [r[1][11:16] for r in r2] == ["11:15", "11:30", "11:45", "12:00"]
        assert all(r[2] != "NULL" and r[3] == "NULL" for r in r2)
        assert len([ln for ln in rows("m1") if ln.startswith("ROW,")]) == 6
        assert not (out / "forecast.txt").exists()  # several meters: no meter in the root folder
    finally:
        st.close()
        pub.close()
        fc.stop()
        ex.stop()


def test_forecaster_and_exporter_processes_serve_two_meters(tmp_path, broker):
    """The forecaster and exporter as real processes (tests/stack.py): two configured meters, one of
    them flow-only at 15 minutes; forecasts per meter, flow only for the flow-only one, no failure."""
    from app.broker import mqtt_settings
    from shared.bus import Bus
    from tests.stack import Stack

    site = f"s{uuid.uuid4().hex[:8]}"  # the session broker keeps retained messages and sessions
    stack = Stack(tmp_path, broker, n_readings=1, rate_per_s=1, extra={"site": site, "meters": [
        {"id": "m1"}, {"id": "m2", "signals": ["flow_rate"], "interval_s": 900}]})
    pub = Bus(mqtt_settings(broker), "test-pub-proc", persistent=False)
    assert pub.connect(10)
    db = stack.data / "flowwatch.db"
    try:
        stack.start("forecaster")
        stack.start("exporter")
        out = stack.data / "exports" / site

        def both_ready():
            return all(stack.alive(n) and f"{n} ready" in stack.log(n) for n in ("forecaster", "exporter"))

        assert wait_for(both_ready, 60), stack.all_logs()
        # the processes subscribe at start; publish until the first hour is crossed for both meters
        _publish(pub, site, "m1", H10 - 2 * M, 64, M)
        _publish(pub, site, "m2", H10 - 15 * M, 6, 15 * M, pressure=False)

        def done():
            if not db.exists():
                return False
            st = SqliteStore(db)
            try:
                f1 = st.read_forecasts(site, "m1", H10, H10 + timedelta(hours=3))
                f2 = st.read_forecasts(site, "m2", H10, H10 + timedelta(hours=3))
            finally:
                st.close()
            return len(f1) >= 24 and len(f2) >= 8 and (out / "m2" / "forecast.txt").exists()

        assert wait_for(done, 90), stack.all_logs()
        st = SqliteStore(db)
        try:
            assert set(st.read_forecasts(site, "m2", H10, H10 + timedelta(hours=3))["signal"]) == {"flow_rate"}
            assert set(st.read_forecasts(site, "m1", H10, H10 + timedelta(hours=3))["signal"]) == {"flow_rate", "pressure"}
        finally:
            st.close()
        assert verify((out / "m2" / "forecast.txt").read_bytes()) and verify((out / "m1" / "server.txt").read_bytes())
        assert stack.alive("forecaster") and stack.alive("exporter")
        logs = stack.log("forecaster") + stack.log("exporter")
        assert "Traceback" not in logs and "pressure model" not in logs
    finally:
        pub.close()
        stack.stop_all()


def test_models_of_the_layout_before_meters_move_under_the_configured_meter(tmp_path):
    from shared import modelstore

    root = tmp_path / "models"
    (root / "flow_rate" / "v1").mkdir(parents=True)
    (root / "flow_rate" / "v1" / "model.tflite").write_bytes(b"x")
    (root / "flow_rate" / "current").write_text("v1\n")
    assert modelstore.legacy_signals(root) == ["flow_rate"]
    assert modelstore.adopt_legacy(root, "site1", "meter1") == ["flow_rate"]
    mdir = modelstore.meter_dir(root, "site1", "meter1")
    assert modelstore.current_version(mdir, "flow_rate") == "v1" and (mdir / "flow_rate" / "v1" / "model.tflite").is_file()
    assert modelstore.legacy_signals(root) == [] and modelstore.adopt_legacy(root, "site1", "meter1") == []


def test_a_spike_reaches_alert_txt_through_the_broker_and_clears_after_the_hold(tmp_path, broker, settings):
    """Issue 15: a 400 m³/h spike (emitted already closed) left STATUS,NONE,0; now it is held."""
    from services.exporter.service import ExporterService
    from shared.bus import Bus
    from shared.messages import Anomaly

    site = f"s{uuid.uuid4().hex[:8]}"
    s = Settings(data_dir=tmp_path / "var", mqtt=settings.mqtt.model_dump(), site=site, meter="m1", exporter={"event_hold_minutes": 5})
    ex = ExporterService(s)
    ex.start_in_thread()
    pub = Bus(s.mqtt, "test-pub-hold", persistent=False)
    assert pub.connect(10)
    alert = s.path(s.exporter.out_dir) / "alert.txt"

    def status():
        return next((ln for ln in protocol.check(alert.read_bytes()) if ln.startswith("STATUS,")), None) if alert.exists() else None

    try:
        assert ex.ready.wait(30)
        _publish(pub, site, "m1", H10, 1, M)
        spike = Anomaly(site=site, meter="m1", kind="spike", signal="flow_rate", severity="info", state="closed",
                        start=H10, end=H10, ts=H10, value=400.0, threshold=120.0)
        pub.publish(pub.topics.anomaly(site, "m1"), spike, qos=1).wait_for_publish(5)
        assert wait_for(lambda: status() == "STATUS,INFO,1", 30), status()
        assert "ALERT,spike,flow_rate,info,2026-03-02T10:00:00+09:00,400.000,120.000,0" in protocol.check(alert.read_bytes())
        for k in range(1, 7):  # 10:01 .. 10:06: the hold (5 minutes) ends at 10:05
            r = Reading(site=site, meter="m1", ts=H10 + k * M, seq=k, flow_rate=50.0, pressure=3.5, source="test")
            pub.publish(pub.topics.reading(site, "m1"), r, qos=1).wait_for_publish(5)
        assert wait_for(lambda: status() == "STATUS,NONE,0", 30), status()
    finally:
        pub.close()
        ex.stop()
