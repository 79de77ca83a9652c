"""The detector service through a real Mosquitto, against both stores (SQLite and a real influxd)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from services.detector.engine import DetectionEngine
from services.detector.service import DetectorService
from shared.bus import Bus
from shared.messages import Anomaly, Command, DeadLetter, Thresholds
from shared.settings import DetectorSettings, Settings
from shared.topics import Topics
from tests.detector_synth import frame, readings
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, the substitute holiday for March 1st in Korea (the settings' zone)
T1 = T0 + timedelta(days=1)  # an ordinary Tuesday
topics = Topics()



class Sink:
    def __init__(self):
        self.items, self.lock = [], threading.Lock()

    def __call__(self, topic, obj):
        with self.lock:
            self.items.append(obj)

    def of(self, kind):
        with self.lock:
            return [a for a in self.items if getattr(a, "kind", None) == kind]


def unique(settings: Settings) -> tuple[Settings, str]:
    tag = uuid.uuid4().hex[:8]
    s = settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update={"client_id_prefix": f"t{tag}"})})
    return s, f"site{tag}"


def client(settings: Settings, name: str) -> Bus:
    b = Bus(settings.mqtt, name, persistent=False)
    assert b.connect(wait_s=10)
    return b


def burst_frame(minutes=60, at=40, start=T0):
    df = frame(start=start, minutes=minutes)
    df.iloc[at:, 0] += 60.0
    df.iloc[at:, 1] -= 1.0
    return df


def feed_around_a_forecast(svc, pub: Bus, site: str, rs: list, issue: int, values: tuple, model: str) -> None:
    """Publish the readings before ``rs[issue]``, then a flow forecast issued at it (10-minute bins,
    ``model``), then the rest; return once every reading is stored."""
    from shared.messages import Forecast

    for r in rs[:issue]:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= issue, timeout=90)
    pub.publish(topics.forecast(site, "m1"), Forecast(site=site, meter="m1", signal="flow_rate", issued_at=rs[issue].ts,
                                                     step_minutes=10, values=values, model=model))
    assert wait_for(lambda: svc.counters.get("handled") >= issue + 1)
    for r in rs[issue:]:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs), timeout=60)


def publish_to_detector(s: Settings, store, site: str, rs: list, name: str, timeout: float = 90, ready=None) -> DetectorService:
    """Start a detector on ``store``, call ``ready(svc)`` once it is ready, publish ``rs`` through the
    broker and return once every one is stored; the detector is stopped by then."""
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    assert svc.ready.wait(60)
    pub = client(s, name)
    try:
        if ready is not None:
            ready(svc)
        for r in rs:
            pub.publish(topics.reading(site, "m1"), r)
        assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs), timeout=timeout)
    finally:
        pub.close()
        svc.stop()
        t.join(30)
    return svc


@pytest.fixture
def running(settings, store):
    """A detector in a thread on the given store; yields (service, settings, site)."""
    s, site = unique(settings)
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    assert svc.ready.wait(30)
    yield svc, s, site
    svc.stop()
    t.join(30)


def test_burst_is_critical_within_two_readings(running, store):
    svc, s, site = running
    watch = client(s, "watch-burst")
    sink = Sink()
    watch.subscribe(topics.all_meters("anomaly"), Anomaly, sink)
    pub = client(s, "pub-burst")
    df = burst_frame()
    rs = readings(df, site=site)
    for r in rs[:40]:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= 40)
    assert sink.of("burst") == []
    for r in rs[40:42]:  # the burst starts with reading 40; the alert must come by reading 41
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: sink.of("burst"))
    b = sink.of("burst")[0]
    assert b.severity == "critical" and b.state == "open" and b.ts <= rs[41].ts and b.site == site
    assert wait_for(lambda: len(store.read_anomalies(site, "m1", T0, T0 + timedelta(days=1))) >= 1)
    stored = store.read_anomalies(site, "m1", T0, T0 + timedelta(days=1))
    assert list(stored["kind"]) == ["burst"] and list(stored["severity"]) == ["critical"]
    assert len(store.read_readings(site, "m1", T0, T0 + timedelta(days=1))) == 42
    watch.close(), pub.close()


def test_a_burst_that_stopped_is_closed_in_the_store_though_the_evening_follows(running, store):
    # Through the broker and the store: a 30-minute burst, then demand rises and the pressure falls
    # 0.4 bar below the baselines the burst froze (the evening). The stored alert must be closed within
    # the clear time of the burst's end (it stayed open all evening before); published = stored.
    import numpy as np

    svc, s, site = running
    df = frame(minutes=200)
    df.iloc[60:90, 0] += 60.0
    df.iloc[60:90, 1] -= 1.0
    df.iloc[90:, 0] += np.linspace(0.0, 15.0, 110)
    df.iloc[90:, 1] -= np.linspace(0.1, 0.4, 110)
    rs = readings(df, site=site)
    pub = client(s, "pub-burst-end")
    for r in rs:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs), timeout=60)
    assert len(store.read_readings(site, "m1", T0, T0 + timedelta(days=1))) == len(rs)
    stored = store.read_anomalies(site, "m1", T0, T0 + timedelta(days=1))
    bursts = stored[stored["kind"] == "burst"]
    assert len(bursts) == 1, stored[["kind", "state", "start", "end"]]
    end = bursts["end"].iloc[0]
    assert end == end and end <= rs[90].ts + timedelta(minutes=s.detector.clear_after_minutes + 3), bursts
    pub.close()


def test_a_burst_open_longer_than_the_backfill_goes_on_over_a_restart_and_closes_when_it_ends(settings, store):
    # Through the broker and the store: a burst opens, the detector restarts when it has been open
    # longer than detector.backfill_hours, then the burst stops. The back-fill reaches back to its
    # opening, so the restarted detector closes it when it ends, as one uninterrupted run does (it
    # closed it silently at the restart, and the store kept it open for ever); published = stored.
    s, site = unique(settings)
    s = s.model_copy(update={"detector": s.detector.model_copy(update={"backfill_hours": 2})})
    df = frame(minutes=330)
    df.iloc[60:280, 0] += 60.0  # 220 minutes: past the 2 h back-fill at the restart (minute 240)
    df.iloc[60:280, 1] -= 1.0
    rs = readings(df, site=site)
    pub = client(s, "pub-long-burst")
    for part in (rs[:240], rs[240:]):
        svc = DetectorService(s, store=store)
        t = svc.start_in_thread()
        assert svc.ready.wait(30)
        for r in part:
            pub.publish(topics.reading(site, "m1"), r)
        assert wait_for(lambda: svc.counters.get("readings_stored") >= len(part), timeout=60)  # noqa: B023 - waited here
        svc.stop()
        t.join(30)
    pub.close()
    assert len(store.read_readings(site, "m1", T0, T0 + timedelta(days=1))) == len(rs)
    stored = store.read_anomalies(site, "m1", T0, T0 + timedelta(days=1))
    want = [a for a in DetectionEngine.from_settings(s).process_frame(site, "m1", df) if a.kind == "burst"]
    assert want[-1].state == "closed"  # the rules alone close it
    bursts = stored[stored["kind"] == "burst"]
    assert len(bursts) == 1 and bursts["start"].iloc[0] == pd.Timestamp(want[-1].start), stored[["kind", "state", "start", "end"]]
    assert bursts["state"].iloc[0] == "closed" and bursts["end"].iloc[0] == pd.Timestamp(want[-1].end), bursts


@pytest.mark.parametrize(("model", "judged"), [("seasonal-naive", False), ("v7", True)])
def test_the_day_after_a_burst_its_seasonal_naive_echo_raises_no_forecast_deviation(running, store, model, judged):
    # Through the broker and the store: a burst on day 1, then on day 2 the forecaster's seasonal
    # naive (yesterday's 10-minute means, the burst in them) and ordinary readings. Seasonal naive
    # copied the burst: no forecast_deviation. A model's forecast is judged (the test can fail).
    from shared.messages import Forecast

    svc, s, site = running
    pub = client(s, f"pub-echo-{model}")
    df = frame(minutes=1440 + 120)
    df.iloc[60:100, 0] += 60.0
    df.iloc[60:100, 1] -= 1.0
    rs = readings(df, site=site)
    issue = 1440 + 49
    for r in rs[:issue + 1]:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= issue + 1, timeout=60)
    flow = df["flow_rate"].to_numpy()
    values = tuple(float(flow[issue - 1440 + 10 * k + 1: issue - 1440 + 10 * (k + 1) + 1].mean()) for k in range(6))
    assert max(values) > 1.3 * flow[issue]  # the echo is in the forecast
    pub.publish(topics.forecast(site, "m1"), Forecast(site=site, meter="m1", signal="flow_rate", issued_at=rs[issue].ts,
                                                     step_minutes=10, values=values, model=model))
    assert wait_for(lambda: svc.counters.get("handled") >= issue + 2)
    for r in rs[issue + 1:]:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs), timeout=60)
    stored = store.read_anomalies(site, "m1", T0, T0 + timedelta(days=3))
    assert (stored["kind"] == "burst").sum() == 1
    assert bool((stored["kind"] == "forecast_deviation").any()) is judged
    assert len(store.read_readings(site, "m1", T0, T0 + timedelta(days=3))) == len(rs)
    pub.close()


@pytest.mark.parametrize(("model", "judged"), [("seasonal-naive", False), ("v7", True)])
def test_in_the_first_week_a_weekday_copied_for_a_saturday_raises_no_forecast_deviation(running, store, model, judged):
    # Through the broker and the store: a meter that started on a Friday (local). Friday had an early
    # morning rise, Saturday has none. At Saturday 05:00 the forecaster's seasonal naive has no weekend
    # day to copy and copies Friday's rise; the Saturday readings "deviate" from it for an hour. That
    # forecast is no reference: no forecast_deviation. A model's forecast is judged (the test can fail).
    import numpy as np

    from shared import features

    svc, s, site = running
    pub = client(s, f"pub-daytype-{model}")
    friday = datetime(2026, 3, 5, 15, 0, tzinfo=UTC)  # Friday 00:00 in Seoul (the settings' zone)
    df = frame(start=friday, minutes=1440 + 7 * 60)
    rise = np.interp(np.arange(1440), [180, 300, 420, 480], [0.0, 25.0, 25.0, 0.0])  # Friday 03:00-08:00, +25 m3/h from 05:00
    df.iloc[:1440, 0] += rise
    rs = readings(df, site=site)
    issue = 1440 + 5 * 60  # Saturday 05:00 local
    end = int(rs[issue].ts.timestamp())
    bins = df["flow_rate"].iloc[:issue].to_numpy().reshape(-1, 10).mean(axis=1)  # 10-minute bins, the last ending at `end`
    values = tuple(float(v) for v in features.seasonal_naive(bins, 6, 10, end, s.timezone))  # what the forecaster serves
    assert np.allclose(values, bins[30:36])  # Friday 05:00-06:00 (bins ending 05:10 .. 06:00): the rise
    assert min(values) > 1.3 * max(df["flow_rate"].iloc[issue: issue + 60])  # the Saturday readings are far below it
    feed_around_a_forecast(svc, pub, site, rs, issue, values, model)
    stored = store.read_anomalies(site, "m1", friday, friday + timedelta(days=3))
    assert bool((stored["kind"] == "forecast_deviation").any()) is judged, stored[["kind", "start", "end"]]
    assert len(store.read_readings(site, "m1", friday, friday + timedelta(days=3))) == len(rs)
    pub.close()


@pytest.mark.parametrize(("holidays", "judged"), [("auto", False), ("none", True)])
def test_a_models_weekday_forecast_for_a_public_holiday_raises_no_forecast_deviation(settings, store, holidays, judged):
    # Through the broker and the store: Monday Feb 16 2026, the day before Korean New Year, a public
    # holiday in the settings' zone (holidays: auto -> KR). The district sleeps in: no morning rise.
    # A model's calendar features know Monday, not the holiday, so its forecast has the weekday's
    # rise; the readings "deviate" from it for an hour. Not judged on a holiday; with
    # holidays: none it is an ordinary Monday and judged (the test can fail).

    base, site = unique(settings)
    s = Settings(**{k: getattr(base, k) for k in Settings.model_fields if k not in ("holidays", "days_off")}, holidays=holidays)
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    assert svc.ready.wait(30)
    pub = client(s, f"pub-holiday-{holidays}")
    monday = datetime(2026, 2, 15, 15, 0, tzinfo=UTC)  # Monday 00:00 in Seoul
    df = frame(start=monday, minutes=7 * 60)
    rs = readings(df, site=site)
    issue = 5 * 60  # 05:00 local
    level = float(df["flow_rate"].iloc[issue - 60: issue].mean())
    values = tuple(level * f for f in (1.8, 1.9, 2.0, 2.0, 2.0, 2.0))  # a weekday's rise, 10-minute bins
    assert min(values) > 1.5 * max(df["flow_rate"].iloc[issue: issue + 60])  # far over the tolerance (30 %)
    feed_around_a_forecast(svc, pub, site, rs, issue, values, "v7")
    stored = store.read_anomalies(site, "m1", monday, monday + timedelta(days=1))
    assert bool((stored["kind"] == "forecast_deviation").any()) is judged, stored[["kind", "start", "end"]]
    assert len(store.read_readings(site, "m1", monday, monday + timedelta(days=1))) == len(rs)
    pub.close()
    svc.stop()
    t.join(30)


def test_redelivered_reading_duplicates_nothing(running, store):
    svc, s, site = running
    watch = client(s, "watch-dup")
    sink = Sink()
    watch.subscribe(topics.all_meters("anomaly"), Anomaly, sink)
    pub = client(s, "pub-dup")
    rs = readings(burst_frame(minutes=45), site=site)
    for r in rs:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs))
    assert wait_for(lambda: len(sink.of("burst")) == 1)
    before = store.read_anomalies(site, "m1", T0, T0 + timedelta(days=1))
    for r in rs[38:45]:  # redeliver the burst readings and some before
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs) + 7)
    assert svc.counters.get("late_readings") == 7
    assert svc.counters.get("readings_identical") == 7 and svc.counters.get("reading_conflicts") == 0
    time.sleep(0.3)  # give a duplicate alert (there must be none) the chance to arrive
    assert len(sink.of("burst")) == 1
    assert len(store.read_readings(site, "m1", T0, T0 + timedelta(days=1))) == len(rs)
    after = store.read_anomalies(site, "m1", T0, T0 + timedelta(days=1))
    assert after.equals(before)
    watch.close(), pub.close()


def test_a_different_reading_for_a_stored_minute_is_counted_and_kept_aside(running, store):
    svc, s, site = running
    pub = client(s, "pub-conflict")
    rs = readings(frame(minutes=10), site=site)
    for r in rs:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= 10)
    other = rs[4].model_copy(update={"flow_rate": rs[4].flow_rate + 7.0, "source": "second-collector"})
    pub.publish(topics.reading(site, "m1"), other)
    assert wait_for(lambda: svc.counters.get("reading_conflicts") == 1)
    stored = store.read_readings(site, "m1", T0, T0 + timedelta(days=1))
    assert stored["flow_rate"].iloc[4] == rs[4].flow_rate and len(stored) == 10
    (c,) = store.read_conflicts(site, "m1", T0, T0 + timedelta(days=1))
    assert (c.ts, c.flow_rate, c.stored_flow_rate, c.source) == (rs[4].ts, other.flow_rate, rs[4].flow_rate, "second-collector")
    pub.close()


def test_malformed_payload_is_dead_lettered_and_the_next_reading_is_handled(running, store):
    svc, s, site = running
    dead = Sink()
    watch = client(s, "watch-dl")
    watch.subscribe(topics.deadletter("detector"), DeadLetter, dead)
    pub = client(s, "pub-dl")
    rs = readings(frame(minutes=3), site=site)
    pub.publish(topics.reading(site, "m1"), rs[0])
    pub.publish(topics.reading(site, "m1"), b'{"site": "x", "ts": "not a time"')
    pub.publish(topics.reading(site, "m1"), b'{"schema_version": 1, "site": "a", "meter": "b", "ts": "2026-03-02T00:00:00Z", "seq": -1}')
    pub.publish(topics.reading(site, "m1"), rs[1])
    assert wait_for(lambda: len(dead.items) == 2 and svc.counters.get("readings_stored") >= 2)
    assert svc.counters.get("dead_lettered") == 2
    assert len(store.read_readings(site, "m1", T0, T0 + timedelta(days=1))) == 2
    watch.close(), pub.close()


def test_recalibrate_command_stores_and_publishes_retained_thresholds(running, store):
    svc, s, site = running
    pub = client(s, "pub-cal")
    rs = readings(frame(minutes=30), site=site)
    for r in rs:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= 30)
    pub.publish(topics.command(site, "m1"), Command(site=site, meter="m1", action="recalibrate", requested_at=datetime.now(UTC)))
    assert wait_for(lambda: store.latest_thresholds(site, "m1", "flow_rate") is not None)
    th = store.latest_thresholds(site, "m1", "flow_rate")
    assert th.method == "static" and th.computed_at == rs[-1].ts + timedelta(seconds=1)
    got = Sink()
    late = client(s, "late-cal")  # a late subscriber gets the retained bands
    late.subscribe(topics.signal_filter(site, "m1", "thresholds"), Thresholds, got)
    assert wait_for(lambda: got.items)
    pub.close(), late.close()


# --- kill -9 of a detector process --------------------------------------------------------
def _config(tmp_path: Path, s: Settings, store) -> Path:
    data = {
        "data_dir": str(tmp_path / "var"),
        "log_level": "INFO",
        "mqtt": {"host": s.mqtt.host, "port": s.mqtt.port, "username": s.mqtt.username,
                 "password": s.mqtt.password.get_secret_value(), "client_id_prefix": s.mqtt.client_id_prefix},
    }
    if store.name == "sqlite":
        data["store"] = {"backend": "sqlite", "sqlite": {"path": str(store.path)}}
    else:
        data["store"] = {"backend": "influxdb", "influxdb": {"url": store.settings.url, "database": store.settings.database}}
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def _start(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "detector", "-c", str(cfg)], cwd=ROOT,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
@pytest.mark.faults
def test_kill9_and_restart_loses_nothing_and_changes_no_decision(settings, store, tmp_path):
    s, site = unique(settings)
    cfg = _config(tmp_path, s, store)
    log = tmp_path / "detector.log"
    meters = ["m1", "m2", "m3"]
    n = 400
    frames = {m: burst_frame(minutes=n, at=300 + 10 * i) for i, m in enumerate(meters)}
    for i, m in enumerate(meters):
        frames[m].iloc[100 + i, 0] = -5.0  # an invalid reading per meter, early
    end = T0 + timedelta(days=2)

    def stored() -> int:
        return sum(len(store.read_readings(site, m, T0, end)) for m in meters)

    proc = _start(cfg, log)
    try:
        # the detector must hold its persistent session before we publish
        assert wait_for(lambda: (tmp_path / "var" / "health" / "detector.json").exists(), 60), log.read_text()
        pub = client(s, "pub-kill")
        order = [(m, r) for i in range(n) for m, r in ((m, readings(frames[m].iloc[i : i + 1], site=site, meter=m)[0]) for m in meters)]
        half = len(order) // 2
        for m, r in order[:half]:
            pub.publish(topics.reading(site, m), r)
        assert wait_for(lambda: stored() > half // 3, 60), log.read_text()
        proc.send_signal(signal.SIGKILL)  # mid-stream
        proc.wait(10)
        for m, r in order[half:]:
            pub.publish(topics.reading(site, m), r).wait_for_publish(10)
        proc = _start(cfg, log)
        assert wait_for(lambda: stored() == len(order), 120), (stored(), log.read_text()[-3000:])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    pub.close()
    # the same decisions as one uninterrupted run of the rules
    for m in meters:
        expected = DetectionEngine.from_settings(Settings()).process_frame(site, m, frames[m])
        want = {(a.kind, a.signal, a.start, a.state, a.end) for a in _final(expected)}
        got_df = store.read_anomalies(site, m, T0, end)
        got = {(r.kind, r.signal, r.start.to_pydatetime(), r.state, None if r.end is None or r.end != r.end else r.end.to_pydatetime())
               for r in got_df.itertuples()}
        assert got == want, m
        assert len(got_df) == len(want)


def _final(anoms):
    """The last update per identity (what the store keeps)."""
    last = {}
    for a in anoms:
        last[(a.kind, a.signal, a.start)] = a
    return list(last.values())


def test_thresholds_recalibrate_cli_stores_prints_and_tells_the_running_detector(settings, tmp_path):
    from shared.store.sqlite import SqliteStore

    s, site = unique(settings)
    db = tmp_path / "cal.db"
    s = s.model_copy(update={"store": s.store.model_copy(update={"sqlite": s.store.sqlite.model_copy(update={"path": db})})})
    df = frame(minutes=15 * 24 * 60)  # bands are learned from threshold_min_days (14) on
    with SqliteStore(db) as st:
        st.write_reading_frame(site, "m1", df)
    svc = DetectorService(s)  # opens the same file; back-fills and learns at start (no bands stored yet)
    t = svc.start_in_thread()
    assert svc.ready.wait(60)
    got = Sink()
    watch = client(s, "watch-cli")
    watch.subscribe(topics.signal_filter(site, "m1", "thresholds"), Thresholds, got)
    cfg = _config(tmp_path, s, SqliteStore(db))
    out = subprocess.run([sys.executable, "-m", "app.cli", "thresholds", "recalibrate", "-c", str(cfg), "--site", site],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert f"{site}/m1 flow_rate: learned (15.0 days of data" in out.stdout and "weekday lower..upper" in out.stdout
    assert f"{site}/m1 steps: learned from 15.0 days to detector.alarm_budget_per_30d" in out.stdout and "pressure_drop (bar)" in out.stdout
    at = df.index[-1].to_pydatetime() + timedelta(seconds=1)
    with SqliteStore(db) as st:
        th = st.latest_thresholds(site, "m1", "pressure")
    assert th.method == "learned" and th.computed_at == at
    # the running detector got the command, recomputed the same bands and published them retained
    assert wait_for(lambda: any(x.computed_at == at and x.signal == "flow_rate" for x in got.items), 30)
    assert wait_for(lambda: svc.counters.get("recalibrations") >= 2, 30)
    svc.stop()
    t.join(30)
    watch.close()


def test_alerts_stored_but_not_published_before_a_stop_are_published_at_restart(settings, store):
    """kill -9 between storing a batch's alerts and publishing them: the restart publishes them."""
    s, site = unique(settings)
    df = frame(minutes=60)
    store.write_reading_frame(site, "m1", df)
    last = df.index[-1].to_pydatetime()
    lost = Anomaly(site=site, meter="m1", kind="burst", signal="both", severity="critical", state="open",
                   start=last - timedelta(minutes=2), ts=last, value=110.0, threshold=60.0, message="burst suspected")
    store.write_anomalies([lost])
    got = Sink()
    watch = client(s, "watch-republish")
    watch.subscribe(topics.anomaly(site, "m1"), Anomaly, got)
    time.sleep(0.5)  # the subscription is in place
    svc = DetectorService(s, store=store)
    svc.start_in_thread()
    try:
        assert svc.ready.wait(30)
        assert wait_for(lambda: got.of("burst"), 30), got.items
        a = got.of("burst")[0]
        assert (a.start, a.state, a.ts) == (lost.start, "open", lost.ts)
        assert svc.counters.get("anomalies_republished") >= 1
    finally:
        svc.stop()
        watch.close()


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_a_reading_that_makes_a_rule_raise_is_dead_lettered_and_the_next_is_judged(running, store):
    """One poison reading (a rule raises on it) never stops the detector: it is dead-lettered with the
    reason and acknowledged; the readings after it are stored and judged (the burst is raised)."""
    svc, s, site = running
    original = svc.engine.process

    def failing_rule(r):
        if r.seq == 20:
            raise ZeroDivisionError("injected rule failure")
        return original(r)

    svc.engine.process = failing_rule
    dead, sink = Sink(), Sink()
    watch = client(s, "watch-poison")
    watch.subscribe(topics.deadletter("detector"), DeadLetter, dead)
    watch.subscribe(topics.all_meters("anomaly"), Anomaly, sink)
    pub = client(s, "pub-poison")
    rs = readings(burst_frame(minutes=45), site=site)
    for r in rs:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs) - 1)
    assert wait_for(lambda: len(dead.items) == 1)
    assert "ZeroDivisionError: injected rule failure" in dead.items[0].reason
    assert wait_for(lambda: sink.of("burst"))  # readings after the poison one are judged
    stored = store.read_readings(site, "m1", T0, T0 + timedelta(days=1))
    assert len(stored) == len(rs) - 1 and rs[20].ts not in {t.to_pydatetime() for t in stored.index}
    assert svc.counters.get("handler_errors") == 1 and not svc.stop_event.is_set()
    watch.close(), pub.close()


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_readings_from_absurd_times_are_dead_lettered_and_move_no_clock(running, store):
    """A reading dated 9999-12-31 or 2099 in the middle of a live stream is dead-lettered with its reason,
    never stored, and the readings after it are stored and judged (not 'late'); no gap alert opens."""
    svc, s, site = running
    dead, sink = Sink(), Sink()
    watch = client(s, "watch-time")
    watch.subscribe(topics.deadletter("detector"), DeadLetter, dead)
    watch.subscribe(topics.all_meters("anomaly"), Anomaly, sink)
    pub = client(s, "pub-time")
    rs = readings(burst_frame(minutes=45), site=site)
    absurd = [rs[10].model_copy(update={"ts": datetime(9999, 12, 31, 23, 59, tzinfo=UTC), "seq": 9000}),
              rs[10].model_copy(update={"ts": datetime(2099, 1, 1, tzinfo=UTC), "seq": 9001}),
              rs[10].model_copy(update={"ts": datetime(1970, 1, 1, tzinfo=UTC), "seq": 9002})]
    for r in rs[:10] + absurd + rs[10:]:
        pub.publish(topics.reading(site, "m1"), r)
    assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs) and len(dead.items) == 3)
    assert all("timestamp" in d.reason for d in dead.items), [d.reason for d in dead.items]
    assert svc.counters.get("late_readings") == 0 and svc.counters.get("implausible_time") == 3
    assert wait_for(lambda: sink.of("burst"))  # judged after the absurd ones
    assert sink.of("gap") == []
    assert store.last_reading_time(site, "m1") == rs[-1].ts
    watch.close(), pub.close()


# --- retention and conflicts --------------------------------------------------------------
LOCAL_DAY0 = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # 2026-03-02 00:00 in Seoul (the default zone)
DAY = timedelta(days=1)


def _retention(settings: Settings, days: int) -> tuple[Settings, str]:
    s, site = unique(settings)
    return s.model_copy(update={"store": s.store.model_copy(update={"retention_days": days})}), site


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_retention_purges_at_the_local_day_boundary_in_event_time(settings, store):
    """Readings spanning retention (3 days) + 3: the detector purges when a reading crosses local midnight;
    everything older than the boundary minus 3 days is gone, the newer readings stay."""
    s, site = _retention(settings, 3)
    df = frame(start=LOCAL_DAY0, minutes=6 * 1440 + 10)
    stored_before = 6 * 1440 - 10  # imported: up to local 23:49 of the 6th day
    store.write_reading_frame(site, "m1", df.iloc[:stored_before])
    old = LOCAL_DAY0 + 2 * DAY + timedelta(hours=5)
    store.write_anomalies([Anomaly(site=site, meter="m1", kind="gap", signal="flow_rate", severity="warning", state="closed",
                                   start=old, end=old + timedelta(minutes=5), ts=old + timedelta(minutes=5))])
    conflicting = readings(df.iloc[:1], site=site)[0].model_copy(update={"flow_rate": -1.0})
    assert store.write_readings([conflicting]).conflicting == 1
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    try:
        assert svc.ready.wait(60)
        pub = client(s, "pub-retention")
        rs = readings(df, site=site)
        for r in rs[stored_before - 5 : stored_before + 5]:  # 5 redelivered (identical), then new ones to 23:59
            pub.publish(topics.reading(site, "m1"), r)
        assert wait_for(lambda: svc.counters.get("readings_stored") >= 10)
        assert svc.counters.get("purges") == 0  # no day crossed yet
        assert svc.counters.get("readings_identical") == 5
        for r in rs[stored_before + 5 :]:  # local midnight of day 7 is crossed
            pub.publish(topics.reading(site, "m1"), r)
        assert wait_for(lambda: svc.counters.get("purges") == 1 and svc.counters.get("readings_stored") >= 20), svc.counters.snapshot()
        cutoff = LOCAL_DAY0 + 6 * DAY - 3 * DAY
        left = store.read_readings(site, "m1", LOCAL_DAY0 - DAY, LOCAL_DAY0 + 8 * DAY)
        assert left.index[0] == pd.Timestamp(cutoff) and left.index[-1] == df.index[-1]
        assert len(left) == 3 * 1440 + 10  # the 3 days before the boundary and the 10 minutes after
        assert store.read_anomalies(site, "m1", LOCAL_DAY0 - DAY, LOCAL_DAY0 + 8 * DAY).empty
        assert store.read_conflicts(site, "m1", LOCAL_DAY0 - DAY, LOCAL_DAY0 + 8 * DAY) == []
        assert svc.counters.get("purge_errors") == 0
        pub.close()
    finally:
        svc.stop()
        t.join(30)


def test_a_failed_purge_is_counted_and_the_next_day_retries(settings, tmp_path):
    from shared.store import StoreError
    from shared.store.sqlite import SqliteStore

    s, site = _retention(settings, 2)
    store = SqliteStore(tmp_path / "r.db")
    df = frame(start=LOCAL_DAY0, minutes=4 * 1440 - 5)
    store.write_reading_frame(site, "m1", df)
    real_purge, calls = store.purge, []

    def failing_once(before):
        calls.append(before)
        if len(calls) == 1:
            raise StoreError("disk I/O error (injected)")
        return real_purge(before)

    store.purge = failing_once
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    try:
        assert svc.ready.wait(60)
        pub = client(s, "pub-purge-fail")
        nxt = LOCAL_DAY0 + 4 * DAY
        # two local midnights, one after the other (one batch holding both would purge once, for the later)
        for ts in (nxt, nxt + timedelta(minutes=1)):
            pub.publish(topics.reading(site, "m1"), readings(frame(start=ts, minutes=1), site=site)[0])
        assert wait_for(lambda: svc.counters.get("purge_errors") == 1, 90), svc.counters.snapshot()
        for ts in (nxt + DAY, nxt + DAY + timedelta(minutes=1)):
            pub.publish(topics.reading(site, "m1"), readings(frame(start=ts, minutes=1), site=site)[0])
        assert wait_for(lambda: svc.counters.get("readings_stored") >= 4, 90), svc.counters.snapshot()
        assert wait_for(lambda: svc.counters.get("purges") == 1, 90)
        assert svc.counters.get("purge_errors") == 1 and not svc.stop_event.is_set()
        assert calls == [nxt - 2 * DAY, nxt + DAY - 2 * DAY]
        left = store.read_readings(site, "m1", LOCAL_DAY0 - DAY, LOCAL_DAY0 + 8 * DAY)
        assert left.index[0] == pd.Timestamp(nxt - DAY) and len(left) == 1440 - 5 + 4
        pub.close()
    finally:
        svc.stop()
        t.join(30)
        store.close()


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_new_meters_past_the_cap_are_refused_and_known_ones_go_on(settings, store):
    """A stream of forged meter ids cannot grow state without bound: past limits.max_meters_per_site a
    new meter's readings are dead-lettered with the reason; the meters already known go on."""
    s, site = unique(settings)
    s = s.model_copy(update={"limits": s.limits.model_copy(update={"max_meters_per_site": 2})})
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    try:
        assert svc.ready.wait(30)
        dead = Sink()
        watch = client(s, "watch-cap")
        watch.subscribe(topics.deadletter("detector"), DeadLetter, dead)
        pub = client(s, "pub-cap")
        df = frame(minutes=3)
        for i in range(3):
            for m in ("m1", "m2", "m3"):
                pub.publish(topics.reading(site, m), readings(df.iloc[i : i + 1], site=site, meter=m)[0])
        assert wait_for(lambda: svc.counters.get("readings_stored") >= 6 and len(dead.items) == 3)
        assert all("limits.max_meters_per_site=2" in d.reason for d in dead.items)
        assert svc.counters.get("meters_refused") == 3
        for m, n in (("m1", 3), ("m2", 3), ("m3", 0)):
            assert len(store.read_readings(site, m, T0, T0 + timedelta(days=1))) == n, m
        watch.close(), pub.close()
    finally:
        svc.stop()
        t.join(30)


def test_step_thresholds_are_kept_over_a_restart(settings, store, tmp_path):
    """The burst / pressure_drop thresholds learned at a recalibration are kept in data_dir and read back
    at start (the back-fill replays 26 hours only: too short to relearn them)."""
    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "detector": s.detector.model_copy(update={"calibration_min_days": 2})})
    store.write_reading_frame(site, "m1", frame(minutes=3 * 24 * 60))
    path = tmp_path / "detector" / "calibration" / f"{site}.m1.json"
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    assert svc.ready.wait(30)
    learned = svc.engine.calibration(site, "m1")  # no thresholds stored yet: recalibrated at start
    svc.stop()
    t.join(30)
    assert learned is not None and learned.days > 2 and all(x is not None for x in learned.pressure_drop)
    assert path.exists()
    again = DetectorService(s, store=store)
    t = again.start_in_thread()
    assert again.ready.wait(30)
    try:
        assert again.engine.calibration(site, "m1") == learned
    finally:
        again.stop()
        t.join(30)
    path.write_text("{not json")  # a damaged file: ignored, counted, the service still starts
    third = DetectorService(s, store=store)
    t = third.start_in_thread()
    assert third.ready.wait(30)
    try:
        assert third.counters.get("calibration_errors") == 1
    finally:
        third.stop()
        t.join(30)


def test_a_weekly_recalibration_keeps_the_step_thresholds_and_an_operators_relearns_them(settings, store, tmp_path):
    """The bands are learned again every week (bands_period), the step thresholds only when their
    quarter is crossed; a recalibrate command (an operator asked) relearns both, through the broker."""
    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "detector": s.detector.model_copy(
        update={"calibration_min_days": 1, "threshold_days": 2, "threshold_min_days": 1})})
    df = frame(minutes=3 * 24 * 60)
    store.write_reading_frame(site, "m1", df)
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    assert svc.ready.wait(30)
    pub = client(s, "pub-recal")
    try:
        first = svc.engine.calibration(site, "m1")  # learned at start, from a full window (not learning)
        assert first is not None and not first.learning(2)
        at = df.index[-1].to_pydatetime() + timedelta(seconds=1)
        n = svc.counters.get("recalibrations")
        ths = svc.recalibrate(site, "m1", at)  # what a week boundary does
        assert all(th.computed_at == at and th.method == "learned" for th in ths)
        assert svc.engine.calibration(site, "m1") is first  # the step thresholds kept
        pub.publish(topics.command(site, "m1"), Command(site=site, meter="m1", action="recalibrate", requested_at=datetime.now(UTC)))
        assert wait_for(lambda: svc.counters.get("recalibrations") >= n + 2, 30)
        again = svc.engine.calibration(site, "m1")
        assert again is not first and again.computed_at == at.timestamp()  # relearned on request
    finally:
        pub.close()
        svc.stop()
        t.join(30)


def test_a_flow_only_meter_is_recalibrated_at_start_once_not_at_every_start(settings, store, tmp_path):
    # its bands are stored for flow only: a restart must not take the missing pressure bands as a
    # recalibration still due (it read weeks of history at every start)
    from shared.settings import MeterSettings

    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "meters": [MeterSettings(id="m1", signals=["flow_rate"])]})
    store.write_reading_frame(site, "m1", frame(minutes=3 * 24 * 60).assign(pressure=float("nan")))
    counts = []
    for _ in range(2):
        svc = DetectorService(s, store=store)
        t = svc.start_in_thread()
        assert svc.ready.wait(30)
        counts.append(svc.counters.get("recalibrations"))
        svc.stop()
        t.join(30)
    assert counts == [1, 0]
    assert store.latest_thresholds(site, "m1", "flow_rate") is not None
    assert store.latest_thresholds(site, "m1", "pressure") is None


def test_day_boundary_recalibration_runs_off_the_inbox_worker(settings, tmp_path):
    """Issue 15 (throughput): while the recalibration at a local midnight reads its weeks of history,
    the inbox worker goes on storing readings; then the new bands are installed and stored, dated at
    the boundary, and the readings after it are all there, in order, none lost."""
    from shared.store.sqlite import SqliteStore

    s, site = unique(settings)
    store = SqliteStore(tmp_path / "r.db")
    df = frame(start=LOCAL_DAY0, minutes=3 * 1440 - 5)  # learning (< threshold_days): recalibrated every day
    store.write_reading_frame(site, "m1", df)
    real_read, gate, entered, release = store.read_reading_columns, threading.Event(), threading.Event(), threading.Event()

    def slow_read(*args, **kwargs):  # the history read of a recalibration, held until the test lets go
        if gate.is_set() and threading.current_thread().name == "detector-maintenance":
            entered.set()
            assert release.wait(120)
        return real_read(*args, **kwargs)

    store.read_reading_columns = slow_read
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    try:
        assert svc.ready.wait(60)
        assert svc.maintenance_idle(60)
        recals = svc.counters.get("recalibrations")
        gate.set()
        pub = client(s, "pub-recal-off-worker")
        boundary = LOCAL_DAY0 + 3 * DAY
        after = readings(frame(start=boundary, minutes=30), site=site)
        pub.publish(topics.reading(site, "m1"), after[0])  # crosses local midnight
        assert entered.wait(60), svc.counters.snapshot()
        for r in after[1:]:
            pub.publish(topics.reading(site, "m1"), r)
        # The recalibration is held in its history read; the worker stores every reading meanwhile.
        assert wait_for(lambda: svc.counters.get("readings_stored") >= 30, 60), svc.counters.snapshot()
        assert svc.counters.get("recalibrations") == recals
        release.set()
        assert svc.maintenance_idle(60)
        assert svc.counters.get("recalibrations") == recals + 1
        for sig in ("flow_rate", "pressure"):
            assert store.latest_thresholds(site, "m1", sig).computed_at == boundary
        got = store.read_readings(site, "m1", boundary, boundary + DAY)
        assert list(got.index) == [pd.Timestamp(r.ts) for r in after]
        assert svc.counters.get("dead_lettered") == 0
        pub.close()
    finally:
        release.set()
        svc.stop()
        t.join(30)
        store.close()


def test_a_backlog_crossing_several_days_recalibrates_once_at_the_latest_boundary(settings, tmp_path):
    """Day-boundary work waits ``settle_s``: boundaries crossed meanwhile supersede the queued one, so a
    draining backlog recalibrates each meter once, at its latest boundary, and purges once."""
    from shared.store.sqlite import SqliteStore

    s, site = unique(settings)
    store = SqliteStore(tmp_path / "r.db")
    store.write_reading_frame(site, "m1", frame(start=LOCAL_DAY0, minutes=3 * 1440 - 5))  # learning: due every day
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    try:
        assert svc.ready.wait(60)
        assert svc.maintenance_idle(60)
        recals, purges = svc.counters.get("recalibrations"), svc.counters.get("purges")
        svc.settle_s = 3600.0  # held until the test lets go
        pub = client(s, "pub-recal-settle")
        days = [LOCAL_DAY0 + k * DAY for k in (3, 4, 5)]
        for k, day in enumerate(days, 1):  # three local midnights, a reading each, in batches of their own
            pub.publish(topics.reading(site, "m1"), readings(frame(start=day, minutes=1), site=site)[0])
            assert wait_for(lambda k=k: svc.counters.get("readings_stored") >= k, 60), svc.counters.snapshot()
        assert svc.counters.get("recalibrations_superseded") == 2
        assert svc.counters.get("recalibrations") == recals and svc.counters.get("purges") == purges
        svc.settle_s = 0.0
        assert svc.maintenance_idle(60)
        assert svc.counters.get("recalibrations") == recals + 1, svc.counters.snapshot()
        assert svc.counters.get("purges") == purges + 1
        for sig in ("flow_rate", "pressure"):
            assert store.latest_thresholds(site, "m1", sig).computed_at == days[-1]
        pub.close()
    finally:
        svc.stop()
        t.join(30)
        store.close()


@pytest.mark.parametrize("off", [1.0, 1.6], ids=["on-its-forecast", "60-percent-off"])
def test_a_15_minute_meter_is_judged_against_the_forecast_of_each_readings_own_bin(settings, store, tmp_path, off):
    # Through the broker and the store: a 15-minute flow-only meter on a steep ramp (x1.4 a reading), and a
    # model's forecast whose bins hold exactly the readings that come. Each reading against its own bin:
    # nothing (against the bin before, as before this round: 40 % off for 45 minutes, a false alarm).
    # The same forecast 60 % off raises forecast_deviation (the test can fail). Published = stored.
    import numpy as np

    from shared.messages import Forecast
    from shared.settings import MeterSettings

    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "meters": [MeterSettings(id="m1", signals=["flow_rate"], interval_s=900)]})
    svc = DetectorService(s, store=store)
    t = svc.start_in_thread()
    assert svc.ready.wait(30)
    try:
        pub = client(s, "pub-bins")
        idx = pd.date_range(T1, periods=12, freq="15min", tz="UTC")  # an ordinary Tuesday (T0 is a holiday's substitute)
        flow = 20.0 * 1.4 ** np.minimum(np.arange(12), 8)  # the ramp, then level
        rs = readings(pd.DataFrame({"flow_rate": flow, "pressure": np.nan}, index=idx), site=site)
        issue = 4
        for r in rs[:issue + 1]:
            pub.publish(topics.reading(site, "m1"), r)
        assert wait_for(lambda: svc.counters.get("readings_stored") >= issue + 1, timeout=60)
        values = tuple(float(v) * off for v in flow[issue:issue + 4])  # bins [t, t+15 min) from the issue on
        pub.publish(topics.forecast(site, "m1"), Forecast(site=site, meter="m1", signal="flow_rate", issued_at=rs[issue].ts,
                                                         step_minutes=15, values=values, model="lstm-v1"))
        assert wait_for(lambda: svc.counters.get("handled") >= issue + 2)
        for r in rs[issue + 1:]:
            pub.publish(topics.reading(site, "m1"), r)
        assert wait_for(lambda: svc.counters.get("readings_stored") >= len(rs), timeout=60)
        stored = store.read_anomalies(site, "m1", T1, T1 + timedelta(days=1))
        assert bool((stored["kind"] == "forecast_deviation").any()) is (off != 1.0)
        assert len(store.read_readings(site, "m1", T1, T1 + timedelta(days=1))) == len(rs)
        pub.close()
    finally:
        svc.stop()
        t.join(30)


@pytest.mark.parametrize("change", ["demand", "leak"])
def test_a_night_flow_that_rose_with_the_days_demand_closes_over_a_restart_and_a_leak_stays_open(settings, store, tmp_path, change):
    """Through the broker and the store, a 15-minute flow-only meter. Four weeks are stored as the
    detector left them (readings, and each night's flow with its day's mean flow); ten more days are
    published in which the demand is 30 % higher (a season: the whole day scaled) or a leak adds as
    much to the night (the same flow all day), with a restart after the third night. night_flow opens
    the first night either way; the demand change closes after a week of nights, saying why, and the
    leak stays open. The same night_flow decisions as one uninterrupted run of the engine; every
    reading stored."""
    import numpy as np

    from shared.settings import MeterSettings

    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "meters": [MeterSettings(id="m1", signals=["flow_rate"], interval_s=900)]})
    start = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # 00:00 local, 2 March
    days, cut = 38, 28 * 96
    idx = pd.date_range(start, periods=days * 96, freq="15min", tz="UTC")
    rng = np.random.default_rng(3)
    local = idx.tz_convert(s.tz)
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60
    day = (local.normalize() - local[0].normalize()).days.to_numpy()
    flow = (50 + 20 * np.sin(2 * np.pi * (hour - 9) / 24)) * (1 + rng.normal(0, 0.03, days))[day] + rng.normal(0, 0.5, len(idx))
    changed = day >= 28
    flow[changed] = flow[changed] * 1.3 if change == "demand" else flow[changed] + 9.0  # the night flow is ~30
    df = pd.DataFrame({"flow_rate": flow, "pressure": np.nan}, index=idx)
    whole = DetectionEngine.from_settings(s)
    expected = {(a.kind, a.start): a for a in whole.process_frame(site, "m1", df) if a.kind == "night_flow"}
    before = DetectionEngine.from_settings(s)
    before.process_frame(site, "m1", df.iloc[:cut])
    store.write_reading_frame(site, "m1", df.iloc[:cut])
    store.write_night_flow(before.take_night_flows())
    rs = readings(df.iloc[cut:], site=site)
    restart = 3 * 96 + 40  # the third night after the change is judged, then the detector stops and starts again
    pub = client(s, f"pub-{change}")
    try:
        for part in (rs[:restart], rs[restart:]):
            svc = DetectorService(s, store=store)
            t = svc.start_in_thread()
            assert svc.ready.wait(30)
            try:
                for r in part:
                    pub.publish(topics.reading(site, "m1"), r)
                assert wait_for(lambda part=part, svc=svc: svc.counters.get("readings_stored") >= len(part), timeout=90)
            finally:
                svc.stop()
                t.join(30)
    finally:
        pub.close()
    assert len(store.read_readings(site, "m1", start, idx[-1] + timedelta(minutes=1))) == len(idx)
    got = store.read_anomalies(site, "m1", start, idx[-1])
    got = got[got["kind"] == "night_flow"]
    want = sorted((k[1], a.state, a.end) for k, a in expected.items())
    assert sorted((r.start.to_pydatetime(), r.state, None if pd.isna(r.end) else r.end.to_pydatetime()) for r in got.itertuples()) == want
    assert len(want) == 1  # opened the first night after the change
    (only,) = got.itertuples()
    assert only.start.to_pydatetime().astimezone(s.tz).date() == (start + timedelta(days=28)).astimezone(s.tz).date()
    if change == "demand":
        assert only.state == "closed" and "change of demand" in only.message
    else:
        assert only.state == "open"
    nights = store.read_night_flow(site, "m1", date(2026, 3, 1), date(2026, 5, 1))
    assert len(nights) >= days - 1 and all(n.day_mean is not None for n in nights[1:])  # each with the day before's mean


def test_a_meter_that_reads_less_often_than_configured_keeps_its_nights_and_raises_no_gap_storm(settings, store, tmp_path):
    """Through the broker and the store: a flow-only meter configured at 5 minutes that sends every 15
    (a logger set otherwise). Every step was a gap alert and no night was recorded (the night-flow rule
    never learned); now a few gaps at the start, then the meter's own cadence; its nights are stored.
    Every reading published is stored."""
    import numpy as np

    from shared.settings import MeterSettings

    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "meters": [MeterSettings(id="m1", signals=["flow_rate"], interval_s=300)]})
    start = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 00:00 local, 3 March
    idx = pd.date_range(start, periods=3 * 96, freq="15min", tz="UTC")
    hour = idx.tz_convert(s.tz).hour.to_numpy()
    flow = 50 + 20 * np.sin(2 * np.pi * (hour - 9) / 24) + np.random.default_rng(4).normal(0, 0.5, len(idx))
    rs = readings(pd.DataFrame({"flow_rate": flow, "pressure": np.nan}, index=idx), site=site)
    publish_to_detector(s, store, site, rs, "pub-cadence")
    end = idx[-1] + timedelta(minutes=1)
    assert len(store.read_readings(site, "m1", start, end)) == len(rs)
    stored = store.read_anomalies(site, "m1", start, end)
    assert (stored["kind"] == "gap").sum() <= 8, stored[["kind", "start"]]
    nights = store.read_night_flow(site, "m1", date(2026, 3, 1), date(2026, 3, 10))
    assert [n.day for n in nights] == [date(2026, 3, 3), date(2026, 3, 4), date(2026, 3, 5)]
    assert nights[0].day_mean is None and all(n.day_mean is not None for n in nights[1:])


def test_an_hourly_meter_learns_its_bands_from_the_store_and_a_saturday_leak_is_caught(settings, store, tmp_path):
    """Through the broker and the store, a flow-only hourly meter with 19 days stored: an hour holds
    too few readings for a band of its own (five Saturdays and holidays: five weekend readings an
    hour), so its bands stayed the static limits and a Saturday flow 30 m³/h over the usual raised
    nothing. Now the bands learned at start are stored with every weekend hour its own, and the
    threshold alert is published and stored. Every reading published is stored."""
    import numpy as np

    from shared.settings import MeterSettings

    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "meters": [MeterSettings(id="m1", signals=["flow_rate"], interval_s=3600)]})
    idx = pd.date_range(LOCAL_DAY0, periods=20 * 24, freq="1h", tz="UTC")  # to Saturday 21 March, 24:00 local
    hour = idx.tz_convert(s.tz).hour.to_numpy()
    flow = 100 + 30 * np.sin(2 * np.pi * (hour - 9) / 24) + np.random.default_rng(8).normal(0, 2, len(idx))
    saturday = idx >= LOCAL_DAY0 + 19 * DAY
    leak = saturday & (hour >= 10) & (hour < 18)
    flow[leak] += 30.0
    df = pd.DataFrame({"flow_rate": flow, "pressure": np.nan}, index=idx)
    store.write_reading_frame(site, "m1", df[~saturday])
    watch, sink = client(s, "watch-hourly"), Sink()
    watch.subscribe(topics.all_meters("anomaly"), Anomaly, sink)

    def learned(svc: DetectorService) -> None:
        assert svc.maintenance_idle(60)
        th = store.latest_thresholds(site, "m1", "flow_rate")
        assert th is not None and th.method == "learned"
        static = DetectorSettings().static_limits["flow_rate"]
        assert all((b.lower, b.upper) != static for b in th.bands), [b for b in th.bands if (b.lower, b.upper) == static]

    try:
        publish_to_detector(s, store, site, readings(df[saturday], site=site), "pub-hourly", ready=learned)
        assert wait_for(lambda: sink.of("threshold"), timeout=30)
    finally:
        watch.close()
    (opened_,) = [a for a in sink.of("threshold") if a.state == "open"]
    assert df.index[leak][0] <= opened_.start <= df.index[leak][2] and "weekend" in opened_.message
    stored = store.read_anomalies(site, "m1", idx[0], idx[-1] + DAY)
    assert "threshold" in set(stored["kind"]) <= {"threshold", "burst"}, stored[["kind", "start"]]  # a step of 30: a burst too
    assert len(store.read_readings(site, "m1", idx[0], idx[-1] + timedelta(minutes=1))) == len(idx)


def test_a_tank_filling_day_after_day_raises_no_burst_through_the_broker_and_a_burst_does(settings, store, tmp_path):
    """Through the broker and the store, a flow-only 1-minute meter of a district with a storage tank
    filled 2-4 times a day (+25 % of the mean flow for an hour or two). 30 days stored; the detector
    calibrates from them at start, then a published day of fills raises no burst (it raised one at
    nearly every fill) and a 60 % burst at its end does. Every reading published is stored."""
    from shared.settings import MeterSettings
    from tests.test_detector_calibration import lumpy_district, with_burst, with_tank_fills

    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "meters": [MeterSettings(id="m1", signals=["flow_rate"], interval_s=60)]})
    df = with_tank_fills(lumpy_district(31, lumps=False)).assign(pressure=float("nan"))
    cut = df.index[0] + timedelta(days=30)
    burst_at = df.index[-1] - timedelta(minutes=30)
    df = with_burst(df, burst_at, 60).assign(pressure=float("nan"))
    store.write_reading_frame(site, "m1", df[df.index < cut])

    def over_the_fills(svc: DetectorService) -> None:
        assert svc.maintenance_idle(120)
        cal = svc.engine.calibration(site, "m1")
        assert cal is not None and min(x for x in cal.flow_rel if x is not None) > 0.25

    publish_to_detector(s, store, site, readings(df[df.index >= cut], site=site), "pub-tank", timeout=120, ready=over_the_fills)
    stored = store.read_anomalies(site, "m1", cut, df.index[-1] + DAY)
    bursts = stored[stored["kind"] == "burst"]
    assert len(bursts) == 1 and burst_at <= bursts["start"].iloc[0] <= burst_at + timedelta(minutes=5), stored[["kind", "start"]]
    assert len(store.read_readings(site, "m1", df.index[0], df.index[-1] + timedelta(minutes=1))) == len(df)


def test_a_meter_in_whole_units_one_unit_up_for_a_night_raises_no_leak_through_the_broker(settings, store, tmp_path):
    """Through the broker and the store, a flow-only 15-minute meter that reads whole m³/h (a small
    district: 2 every night). Three weeks stored as the detector left them; three more days published,
    one night at 3: no night_flow (it was a critical leak, 17 sigmas: the nights' MAD is 0), that night
    stored as it was. Every reading published is stored."""
    import numpy as np

    from shared.settings import MeterSettings

    s, site = unique(settings)
    s = s.model_copy(update={"data_dir": tmp_path, "meters": [MeterSettings(id="m1", signals=["flow_rate"], interval_s=900)]})
    start = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # 00:00 local, 2 March
    days, cut = 24, 21 * 96
    idx = pd.date_range(start, periods=days * 96, freq="15min", tz="UTC")
    local = idx.tz_convert(s.tz)
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60
    flow = np.round(2.2 + 3 * np.exp(-(((hour - 8) / 3) ** 2)) + 2 * np.exp(-(((hour - 20) / 3) ** 2))
                    + np.random.default_rng(6).normal(0, 0.15, len(idx)))
    up = (idx >= start + timedelta(days=22)) & (hour >= 2) & (hour < 4) & (local.normalize() == local[0].normalize() + pd.Timedelta(days=22))
    flow[up] = np.maximum(flow[up], 3.0)
    df = pd.DataFrame({"flow_rate": flow, "pressure": np.nan}, index=idx)
    before = DetectionEngine.from_settings(s)
    assert [a for a in before.process_frame(site, "m1", df.iloc[:cut]) if a.kind == "night_flow"] == []
    store.write_reading_frame(site, "m1", df.iloc[:cut])
    store.write_night_flow(before.take_night_flows())
    publish_to_detector(s, store, site, readings(df.iloc[cut:], site=site), "pub-whole-units")
    assert len(store.read_readings(site, "m1", start, idx[-1] + timedelta(minutes=1))) == len(idx)
    got = store.read_anomalies(site, "m1", start, idx[-1])
    assert "night_flow" not in set(got["kind"]), got[["kind", "start", "message"]]
    nights = {n.day: n.value for n in store.read_night_flow(site, "m1", date(2026, 3, 1), date(2026, 4, 1))}
    assert nights[date(2026, 3, 24)] == 3.0 and {nights[d] for d in nights if d != date(2026, 3, 24)} == {2.0}
