"""Healthy means working, not only alive: the decision from a heartbeat (pure), what a service puts in
its heartbeat (bus, inbox, store, collector's meter), and a real service whose broker goes away and
comes back, judged by the same command Docker runs (``python -m shared.health``)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.collector.service import CollectorService
from services.collector.sources import Sample, Source
from services.detector.service import DetectorService
from shared import health
from shared import service as service_mod
from shared.health import check, judge, resolve_data_dir
from shared.messages import Reading
from shared.service import Service
from shared.settings import Settings, SqliteSettings, load_settings
from shared.store import StoreUnavailable
from shared.store.sqlite import SqliteStore
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def status(at: float = NOW, **failing: tuple[float, float]) -> dict:
    """A heartbeat's content at ``at``: online, with failure states ``kind=(seconds ago, limit_s)``."""
    return {"service": "x", "state": "online", "ts": iso(at),
            "failing": {k: {"since": iso(at - ago), "limit_s": limit, "detail": f"{k} detail"} for k, (ago, limit) in failing.items()}}


# --- the decision (pure) --------------------------------------------------------------------------


def test_fresh_online_and_nothing_failing_is_healthy() -> None:
    ok, text = judge("detector", status(), age_s=3, now=NOW)
    assert ok and text == "detector: healthy, heartbeat 3s ago"


def test_offline_or_a_stale_heartbeat_is_unhealthy() -> None:
    assert judge("detector", {**status(), "state": "offline"}, age_s=1, now=NOW) == (False, "detector: unhealthy: state 'offline'")
    ok, text = judge("detector", status(), age_s=61, now=NOW)
    assert not ok and "heartbeat is 61s old" in text
    assert judge("detector", status(), age_s=61, now=NOW, stale_s=120)[0]


@pytest.mark.parametrize(("kind", "what", "setting"), [
    ("broker", "broker unreachable", "mqtt.unhealthy_after_s"),
    ("store", "store or disk failing", "store.unhealthy_after_s"),
    ("meter", "meter silent", "collector.unhealthy_after_intervals"),
])
def test_a_failure_is_unhealthy_only_once_it_lasts_longer_than_its_limit(kind: str, what: str, setting: str) -> None:
    ok, text = judge("svc", status(**{kind: (119, 120)}), age_s=2, now=NOW)
    assert ok and text == f"svc: healthy, heartbeat 2s ago; {what} for 119s (unhealthy after 120s)"
    ok, text = judge("svc", status(**{kind: (121, 120)}), age_s=2, now=NOW)
    assert not ok and text == f"svc: unhealthy: {what} for 121s (limit 120s, {setting}): {kind} detail"


def test_every_failure_is_named() -> None:
    ok, text = judge("collector", status(broker=(300, 120), meter=(400, 180), store=(10, 120)), age_s=2, now=NOW)
    assert not ok
    assert "broker unreachable for 300s" in text and "meter silent for 400s" in text
    assert "store or disk failing for 10s (unhealthy after 120s)" in text
    bad = {**status(), "failing": {"broker": {"since": "yesterday"}}}
    assert not judge("x", bad, age_s=1, now=NOW)[0]


def test_check_reads_the_heartbeat_file(tmp_path: Path) -> None:
    assert check(tmp_path, "detector") == (False, f"detector: unhealthy: no heartbeat at {tmp_path / 'health' / 'detector.json'} "
                                           f"([Errno 2] No such file or directory: '{tmp_path / 'health' / 'detector.json'}')")
    f = health.health_path(tmp_path, "detector")
    f.parent.mkdir()
    f.write_text("{not json")
    assert not check(tmp_path, "detector")[0]
    now = time.time()
    f.write_text(json.dumps(status(now, broker=(100, 120))))
    assert check(tmp_path, "detector", now=now)[0]
    ok, text = check(tmp_path, "detector", now=now + 30)  # 130 s without a broker: the probe's clock, not the file's
    assert not ok and "broker unreachable for 130s" in text
    ok, text = check(tmp_path, "detector", now=now + 61)  # and the heartbeat has gone stale meanwhile
    assert not ok and "heartbeat is 61s old" in text


def test_the_data_folder_is_found_as_the_services_find_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.upper().startswith("FLOWWATCH_"):
            monkeypatch.delenv(k)
    conf = tmp_path / "flowwatch.yaml"
    conf.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "from-file")}))
    cases = [({}, None), ({}, conf), ({"FLOWWATCH_DATA_DIR": str(tmp_path / "from-env")}, conf),
             ({"FLOWWATCH_CONFIG": str(conf)}, None), ({"FLOWWATCH_DATA_DIR": str(tmp_path / "env-only")}, None)]
    for env, config in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert resolve_data_dir(None, config) == load_settings(config).data_dir, (env, config)
    assert resolve_data_dir(tmp_path / "flag", conf) == tmp_path / "flag"
    assert health.DEFAULT_DATA_DIR == Settings().data_dir
    from app.credentials import SERVICES

    assert health.SERVICES == SERVICES


HEAVY = ("pandas", "numpy", "paho", "pydantic", "pydantic_settings", "yaml", "requests", "shared.service", "shared.settings")


@pytest.mark.parametrize("cmd", [["-m", "shared.health"], ["-m", "app.cli", "health"]], ids=["docker-healthcheck", "flowwatch-health"])
def test_the_probe_imports_only_what_it_needs(cmd: list[str], tmp_path: Path) -> None:
    """Docker runs the probe every 15 s in every container: it must not load the application (it
    cost ~290 ms of CPU when it built the settings and imported the service base, ~35 ms now)."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['probe', *{cmd[2:]!r}, 'collector']\n"
            f"try:\n    runpy.run_module({cmd[1]!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print(' '.join(sorted(sys.modules)))\n")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "FLOWWATCH_DATA_DIR": str(tmp_path),
           "FLOWWATCH_CONFIG": str(ROOT / "config" / "flowwatch.yaml")}  # as in the containers
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "exit 1" and "collector: unhealthy: no heartbeat" in out.stdout, out  # it ran: no heartbeat here
    loaded = set(lines[-1].split())
    assert "shared.health" in loaded or cmd[1] == "shared.health"
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}, sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY)


# --- what a service writes ------------------------------------------------------------------------


class Idle(Service):
    name = "detector"


def test_a_service_never_connected_is_failing_on_the_broker_since_it_started(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, mqtt={"port": 1, "unhealthy_after_s": 30})
    t0 = time.time()
    svc = Idle(s)
    svc.publish_status()  # not connected: the heartbeat file only
    hb = service_mod.health_file(s, "detector")
    assert hb.exists()
    failing = svc.status().failing
    assert set(failing) == {"broker"} and failing["broker"].limit_s == 30
    assert t0 - 1 <= failing["broker"].since.timestamp() <= time.time()
    assert "127.0.0.1:1" in failing["broker"].detail
    assert check(tmp_path, "detector")[0]
    ok, text = check(tmp_path, "detector", now=time.time() + 31)
    assert not ok and "broker unreachable" in text
    # connected: nothing fails; lost again: failing since the loss
    svc.bus._on_connect(svc.bus.client, None, None, type("RC", (), {"is_failure": False})(), None)
    assert svc.status().failing == {}
    t1 = time.time()
    svc.bus._on_disconnect(svc.bus.client, None, None, "lost", None)
    assert svc.status().failing["broker"].since.timestamp() >= t1 - 0.01
    assert svc.status("offline").failing == {}  # a stopped service says offline, not why


def test_the_inbox_retrying_an_infrastructure_fault_is_the_store_failing(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, store={"unhealthy_after_s": 45})
    svc = Idle(s)
    seen = []
    calls = iter([OSError("disk full"), StoreUnavailable("influx down"), None])

    def write() -> str:
        exc = next(calls)
        seen.append(svc.status().failing.get("store"))
        if exc is not None:
            raise exc
        return "done"

    t0 = time.time()
    assert svc.retry(write, "writing x") == "done"
    assert seen[0] is None  # the first try had not failed yet
    assert seen[1] is not None and seen[2] is not None and seen[1].since == seen[2].since  # since the first failure
    assert t0 <= seen[2].since.timestamp() and seen[2].limit_s == 45
    assert seen[2].detail == "writing x: StoreUnavailable: influx down"
    assert "store" not in svc.status().failing  # it works again
    assert svc.counters.get("infra_retries") == 2


def test_a_sqlite_store_waiting_on_a_lock_is_the_store_failing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    st = SqliteStore(path, SqliteSettings(lock_retry_s=0.3, busy_timeout_ms=0))
    svc = Idle(Settings(data_dir=tmp_path))
    svc.store = st
    r = Reading(site="s", meter="m", ts=datetime(2026, 3, 1, tzinfo=UTC), seq=0, flow_rate=1.0, pressure=3.0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # a DB browser with unsaved changes
    with pytest.raises(StoreUnavailable):
        st.write_readings([r])
    failing = svc.status().failing["store"]
    assert "sqlite store locked" in failing.detail  # still failing: nothing has worked since
    other.execute("ROLLBACK")
    other.close()
    st.write_readings([r])
    assert svc.status().failing == {k: v for k, v in svc.status().failing.items() if k != "store"}
    st.close()


class Meter(Source):
    """A meter that talks on its own, once per interval, and can fall silent."""

    name = "test-meter"

    def __init__(self) -> None:
        self.silent = threading.Event()

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Sample | None:
        if self.silent.is_set():
            time.sleep(min(timeout, 0.2))
            return None
        time.sleep(0.05)
        return Sample(flow_rate=1.0, pressure=3.0)

    def close(self) -> None:
        pass


def test_a_collector_whose_meter_is_silent_is_unhealthy(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, collector={"interval_s": 60, "unhealthy_after_intervals": 3})
    svc = CollectorService(s, source=Meter())
    assert "meter" not in svc.failing()  # just started: not overdue
    svc.channels[0].last_reading_at = time.time() - 91  # 1.5 intervals without a reading
    meter = svc.failing()["meter"]
    assert meter.limit_s == 180 and "no reading from test-meter" in meter.detail
    svc.channels[0].last_reading_at = time.time() - 181
    svc.publish_status()
    ok, text = check(tmp_path, "collector")
    assert not ok and "meter silent for 181s (limit 180s" in text
    svc.finished = True  # a replay that ended is not a silent meter
    assert "meter" not in svc.failing()


# --- real parts -----------------------------------------------------------------------------------


def probe(data_dir: Path, name: str) -> tuple[int, str]:
    """What the Docker healthcheck runs, in a process of its own."""
    out = subprocess.run([sys.executable, "-m", "shared.health", name, "--data-dir", str(data_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out.returncode, out.stdout.strip()


def test_a_service_whose_broker_stops_is_unhealthy_after_the_limit_and_healthy_when_it_is_back(
        fresh_broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.broker import mqtt_settings

    monkeypatch.setattr(service_mod, "STATUS_EVERY_S", 0.2)  # the heartbeat's cadence, shortened
    limit = 2.0
    s = Settings(data_dir=tmp_path / "var", mqtt={**mqtt_settings(fresh_broker).model_dump(), "unhealthy_after_s": limit,
                                                  "client_id_prefix": "health"})
    data = s.data_dir
    svc = DetectorService(s, store=SqliteStore(tmp_path / "store.db"))
    t = svc.start_in_thread()
    try:
        assert svc.ready.wait(30) and svc.bus.wait_connected(10)
        assert wait_for(lambda: check(data, "detector")[0], 10)
        assert probe(data, "detector")[0] == 0

        fresh_broker.stop()
        stopped = time.monotonic()
        assert wait_for(lambda: "broker unreachable" in check(data, "detector")[1], 10)  # in the next heartbeat
        # failing, but not for long yet: still healthy, and it says so
        ok, text = check(data, "detector")
        if time.monotonic() - stopped < limit - 0.5:
            assert ok and "broker unreachable for" in text and f"unhealthy after {limit:.0f}s" in text
        assert wait_for(lambda: not check(data, "detector")[0], 15)
        assert time.monotonic() - stopped >= limit - 0.3  # not before the limit
        code, text = probe(data, "detector")
        assert code == 1 and "detector: unhealthy: broker unreachable for" in text and "mqtt.unhealthy_after_s" in text, text
        assert f"not connected to 127.0.0.1:{fresh_broker.port}" in text

        fresh_broker.start()
        assert wait_for(lambda: check(data, "detector")[0], 20)  # reconnects within mqtt.reconnect_max_s
        code, text = probe(data, "detector")
        assert code == 0 and text.startswith("detector: healthy"), text
    finally:
        svc.stop()
        t.join(30)
    assert not check(data, "detector")[0]  # stopped: offline


def test_a_running_collector_whose_meter_falls_silent_is_unhealthy_until_it_talks_again(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_mod, "STATUS_EVERY_S", 0.2)
    s = settings.model_copy(update={"collector": settings.collector.model_copy(update={"interval_s": 1, "unhealthy_after_intervals": 2}),
                                    "mqtt": settings.mqtt.model_copy(update={"client_id_prefix": "health-coll"})})
    meter = Meter()
    svc = CollectorService(s, source=meter)
    t = svc.start_in_thread()
    try:
        assert svc.ready.wait(30)
        assert wait_for(lambda: svc.counters.get("spooled") >= 1, 10)
        assert wait_for(lambda: check(s.data_dir, "collector")[0], 10)
        meter.silent.set()
        assert wait_for(lambda: not check(s.data_dir, "collector")[0], 15)
        code, text = probe(s.data_dir, "collector")
        assert code == 1 and "collector: unhealthy: meter silent for" in text and "no reading from test-meter" in text, text
        meter.silent.clear()
        assert wait_for(lambda: check(s.data_dir, "collector")[0], 15)
    finally:
        svc.stop()
        t.join(30)


def test_stale_heartbeat_of_a_hung_service(tmp_path: Path) -> None:
    """A service whose status thread stopped writing is unhealthy by the heartbeat's age alone."""
    f = health.health_path(tmp_path, "exporter")
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(status()))
    old = time.time() - 120
    os.utime(f, (old, old))
    ok, text = check(tmp_path, "exporter")
    assert not ok and "heartbeat is 120s old" in text

