"""Fault suite: a stream of readings through the real services (separate processes), a real
Mosquitto and a real store, with parts killed, stopped or locked mid-stream. Afterwards the store is
checked reading by reading: nothing lost, nothing duplicated (the store's identity is (site, meter,
ts); a duplicate would show as a missing neighbour or a wrong count)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from app.broker import MosquittoProcess
from app.influxd import InfluxProcess
from shared.store.sqlite import SqliteStore
from tests.harness import wait_for
from tests.stack import Stack

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SITE, METER = "site1", "meter1"


def stored_times(stack: Stack, store=None) -> list[pd.Timestamp]:
    own = store is None
    if own:
        path = stack.data / "flowwatch.db"
        if not path.exists():
            return []
        store = SqliteStore(path)
    try:
        df = store.read_readings(SITE, METER, stack.times[0], stack.times[-1] + pd.Timedelta(minutes=1))
    finally:
        if own:
            store.close()
    return list(df.index)


def assert_complete(stack: Stack, store=None) -> None:
    got = stored_times(stack, store)
    want = [pd.Timestamp(t) for t in stack.times]
    missing = sorted(set(want) - set(got))
    assert not missing, f"{len(missing)} reading(s) lost, first {missing[:3]}\n{stack.all_logs()}"
    assert got == want  # in order, none twice, nothing extra


def wait_stored(stack: Stack, n: int, timeout: float, store=None) -> bool:
    return wait_for(lambda: len(stored_times(stack, store)) >= n, timeout, every=0.5)


@pytest.fixture
def own_broker(tmp_path: Path):
    b = MosquittoProcess(tmp_path / "mosquitto").start()
    yield b
    b.stop()


def test_broker_killed_mid_stream(tmp_path, own_broker):
    st = Stack(tmp_path, own_broker, n_readings=400, rate_per_s=20)
    try:
        st.start("detector")
        st.start("collector")
        assert wait_stored(st, 100, 60), st.all_logs()
        own_broker.kill()
        time.sleep(3)
        own_broker.start()
        assert wait_stored(st, 400, 120), st.all_logs()
        assert_complete(st)
        assert st.alive("collector") and st.alive("detector")
    finally:
        st.stop_all()


def test_broker_killed_while_the_detector_lags_loses_nothing(tmp_path, own_broker):
    """The broker acknowledged readings it held only in memory (it persists every few seconds) and
    dies with them: the collector still has them (a reading leaves its spool when the detector has
    stored it) and sends them again on the new connection."""
    st = Stack(tmp_path, own_broker, n_readings=300, rate_per_s=20)
    try:
        st.start("detector")
        st.start("collector")
        assert wait_stored(st, 50, 60), st.all_logs()
        st.procs["detector"].send_signal(signal.SIGSTOP)  # the detector lags: the broker queues for it
        time.sleep(2)
        own_broker.kill()  # kill -9: what it had not yet written to its persistence file is gone
        own_broker.start()
        st.procs["detector"].send_signal(signal.SIGCONT)
        assert wait_stored(st, 300, 120), st.all_logs()
        assert_complete(st)
        assert st.alive("collector") and st.alive("detector")
        assert wait_for(lambda: json.loads((st.data / "health" / "collector.json").read_text())["counters"].get("spool_depth") == 0, 30, every=0.5)
    finally:
        st.stop_all()


@pytest.mark.parametrize("victim", ["collector", "detector", "forecaster", "exporter", "trainer"])
def test_service_killed_mid_stream(tmp_path, own_broker, victim):
    st = Stack(tmp_path, own_broker, n_readings=400, rate_per_s=20)
    try:
        for name in ("detector", "forecaster", "exporter", "trainer", "collector"):
            st.start(name)
        assert wait_stored(st, 80, 60), st.all_logs()
        st.kill(victim)
        time.sleep(1)
        st.start(victim)
        assert wait_stored(st, 400, 120), st.all_logs()
        assert_complete(st)
        for name in ("detector", "forecaster", "exporter", "trainer", "collector"):
            assert st.alive(name), f"{name} died\n{st.log(name)[-3000:]}"
    finally:
        st.stop_all()


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def health(stack: Stack, name: str) -> dict:
    return json.loads((stack.data / "health" / f"{name}.json").read_text())


def test_sqlite_write_lock_held_60s(tmp_path, own_broker):
    """Another program holds the SQLite write lock for a minute mid-stream: every reading is stored,
    every hour's forecast is made and stored, nothing is dead-lettered, no service loses its broker
    connection (their handlers wait in the inbox worker, not on paho's network thread; keepalive 10 s)."""
    st = Stack(tmp_path, own_broker, n_readings=300, rate_per_s=4)
    services = ("detector", "forecaster", "exporter", "collector")
    try:
        for name in services:
            st.start(name)
        assert wait_stored(st, 30, 60), st.all_logs()
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(st.data / "flowwatch.db"), "60"], stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        locker.wait(90)
        assert time.monotonic() - t0 >= 59
        assert wait_stored(st, 300, 120), st.all_logs()
        assert_complete(st)
        store = SqliteStore(st.data / "flowwatch.db")
        try:  # hours 01:00 .. 04:00 of the stream are crossed: one forecast per signal each
            want = {pd.Timestamp(st.times[0]) + pd.Timedelta(hours=h) for h in (1, 2, 3, 4)}
            assert wait_for(lambda: {pd.Timestamp(p[1]) for p in store.read_forecast_points(
                SITE, METER, st.times[0], st.times[-1] + pd.Timedelta(days=1))} >= want, 30, every=0.5)
            points = store.read_forecast_points(SITE, METER, st.times[0], st.times[-1] + pd.Timedelta(days=1))
            for sig in ("flow_rate", "pressure"):
                assert {pd.Timestamp(p[1]) for p in points if p[0] == sig} >= want, sig
        finally:
            store.close()
        time.sleep(11)  # a fresh status with the final counters
        for name in services:
            assert st.alive(name), f"{name} died\n{st.log(name)[-3000:]}"
            c = health(st, name)["counters"]
            assert c.get("dead_lettered", 0) == 0, (name, c)
            assert c.get("mqtt_disconnects", 0) == 0, (name, c)
        assert "locked by another process" in st.log("detector")
    finally:
        st.stop_all()


def test_influxdb_stopped_for_a_minute(tmp_path, own_broker):
    influx = InfluxProcess(tmp_path / "influxd").start()
    rate = 5  # readings per wall second
    st = Stack(tmp_path, own_broker, n_readings=rate * 100, rate_per_s=rate,
               store={"backend": "influxdb", "influxdb": {"url": influx.url, "database": "faults"}})
    from shared.store.influx import InfluxStore

    reader = InfluxStore(influx.settings(database="faults"))
    try:
        st.start("detector")
        st.start("collector")
        assert wait_stored(st, 50, 60, reader), st.all_logs()
        influx.stop()
        down = time.monotonic()
        time.sleep(60)
        backlog_s = time.monotonic() - down
        influx.start()
        t_up = time.monotonic()
        before = len(stored_times(st, reader))
        assert wait_stored(st, min(len(st.times), before + int(rate * backlog_s * 0.9)), 60, reader), st.all_logs()
        drain_s = time.monotonic() - t_up
        assert wait_stored(st, len(st.times), 120, reader), st.all_logs()
        assert_complete(st, reader)
        # the minute's backlog drained at >= 20x real time
        assert drain_s <= backlog_s / 20, f"backlog of {backlog_s:.0f}s drained in {drain_s:.1f}s"
    finally:
        st.stop_all()
        reader.close()
        influx.stop()


def test_spool_filled_to_bound(tmp_path, own_broker):
    st = Stack(tmp_path, own_broker, n_readings=300, rate_per_s=50, extra={"collector": {"spool_max_rows": 100}})
    try:
        own_broker.stop()
        st.start("collector")
        spool = st.data / "spool.db"
        assert wait_for(lambda: "dropped" in st.log("collector"), 60, every=0.2), st.log("collector")
        # every reading produced before the broker returns (the replay's own end line; a bare "300" would
        # also match a log line's milliseconds and let the broker in while readings still arrive)
        assert wait_for(lambda: "finished (300 readings)" in st.log("collector"), 30, every=0.2), st.log("collector")
        own_broker.start()
        st.start("detector")
        assert wait_stored(st, 100, 60), st.all_logs()
        time.sleep(2)
        got = stored_times(st)
        # the newest 100 readings survive the bound; the 200 oldest were dropped, counted and logged
        assert got == [pd.Timestamp(t) for t in st.times[-100:]], st.all_logs()
        status = json.loads((st.data / "health" / "collector.json").read_text())
        assert status["counters"].get("dropped") == 200
        assert spool.exists()
    finally:
        st.stop_all()


def test_no_secret_in_logs_or_status(tmp_path, own_broker):
    st = Stack(tmp_path, own_broker, n_readings=60, rate_per_s=20, extra={"log_level": "DEBUG"})
    try:
        for name in ("detector", "forecaster", "exporter", "trainer", "collector"):
            st.start(name)
        assert wait_stored(st, 60, 60), st.all_logs()
        statuses = {}
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="secret-watch")
        c.username_pw_set(own_broker.username, own_broker.password)
        c.on_message = lambda cl, u, m: statuses.__setitem__(m.topic, m.payload)
        c.connect(own_broker.host, own_broker.port)
        c.subscribe("flowwatch/v1/service/+/status", qos=1)
        c.loop_start()
        assert wait_for(lambda: len(statuses) >= 5, 30, every=0.2)
        c.loop_stop()
        c.disconnect()
    finally:
        st.stop_all()
    secret = own_broker.password
    assert secret not in st.all_logs(tail=10**9)
    for topic, payload in statuses.items():
        assert secret.encode() not in payload, topic
    for hb in (st.data / "health").glob("*.json"):
        assert secret not in hb.read_text()
