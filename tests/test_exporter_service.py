"""The exporter service through a real Mosquitto and a real SQLite store."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.exporter import protocol
from services.exporter.service import ExporterService
from shared.bus import Bus
from shared.messages import Anomaly, DeadLetter, ExportRecord, Forecast, Reading
from shared.settings import Settings
from shared.store.sqlite import SqliteStore
from tests.exporter_check import verify
from tests.harness import wait_for

TZ = ZoneInfo("Asia/Seoul")
M = timedelta(minutes=1)
T10 = datetime(2026, 3, 1, 10, 0, tzinfo=TZ).astimezone(UTC)


class Sink:
    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def __call__(self, topic, obj):
        with self.lock:
            self.items.append((topic, obj))


@pytest.fixture
def cfg(settings: Settings) -> Settings:
    """Own site id and client ids per test: the session broker keeps retained messages and sessions."""
    tag = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={"site": f"s{tag}", "meter": "m1", "mqtt": settings.mqtt.model_copy(update={"client_id_prefix": f"t{tag}"})}
    )


def start(cfg: Settings) -> tuple[ExporterService, threading.Thread]:
    svc = ExporterService(cfg)
    th = svc.start_in_thread()
    assert svc.ready.wait(30), "exporter did not become ready"
    return svc, th


def stop(svc: ExporterService, th: threading.Thread) -> None:
    svc.stop()
    th.join(30)
    assert not th.is_alive()


def client(cfg: Settings, name: str) -> Bus:
    b = Bus(cfg.mqtt, name, client_id=f"{cfg.mqtt.client_id_prefix}-{name}", persistent=False)
    assert b.connect(wait_s=10)
    return b


def test_files_mirror_deadletter_and_restart(cfg: Settings):
    site, meter = cfg.site, cfg.meter
    store = SqliteStore(cfg.path(cfg.store.sqlite.path))  # plays the detector / forecaster: they store, we read
    out = cfg.path(cfg.exporter.out_dir)
    svc, th = start(cfg)
    pub = client(cfg, "pub")
    dead = Sink()
    watch = client(cfg, "watch")
    watch.subscribe(watch.topics.deadletter("exporter"), DeadLetter, dead)
    topics = pub.topics
    try:
        fc = [
            Forecast(site=site, meter=meter, signal="flow_rate", issued_at=T10 - 60 * M, step_minutes=10,
                     values=(1, 2, 3, 4, 5, 42.5), model="seasonal-naive"),
            Forecast(site=site, meter=meter, signal="pressure", issued_at=T10 - 60 * M, step_minutes=10,
                     values=(1, 1, 1, 1, 1, 3.25), model="seasonal-naive"),
        ]
        for f in fc:
            store.write_forecast(f)
            pub.publish(topics.forecast(site, meter), f).wait_for_publish(5)
        assert wait_for(lambda: svc.counters.get("forecasts") == 2)

        readings = [Reading(site=site, meter=meter, ts=T10 - 2 * M + i * M, seq=i, flow_rate=20.0 + i, pressure=3.0)
                    for i in range(14) if i != 5]  # 09:58 .. 10:11, 10:03 missing
        store.write_readings(readings)
        burst = Anomaly(site=site, meter=meter, kind="burst", signal="both", severity="critical", state="open",
                        start=T10 + 4 * M, ts=T10 + 4 * M, value=99.0, threshold=50.0)
        store.write_anomalies([burst])
        for r in readings:
            pub.publish(topics.reading(site, meter), r).wait_for_publish(5)
            if r.ts == T10 + 4 * M:
                pub.publish(topics.anomaly(site, meter), burst).wait_for_publish(5)
                pub.publish(topics.reading(site, meter), b"{not json").wait_for_publish(5)  # malformed
                pub.publish(topics.anomaly(site, meter), b'{"site": "x"}').wait_for_publish(5)  # invalid
        server, alert = out / "server.txt", out / "alert.txt"
        assert wait_for(lambda: server.exists() and b"WINDOW,2026-03-01T10:00:00+09:00" in server.read_bytes())
        assert wait_for(lambda: alert.exists() and b"ASOF,2026-03-01T10:11:00+09:00" in alert.read_bytes())
        assert wait_for(lambda: len(dead.items) == 2)
        assert svc.counters.get("dead_lettered") == 2

        data = server.read_bytes()
        assert verify(data)
        rows = [line.split(",") for line in data.decode().split("\r\n") if line.startswith("ROW,")]
        assert len(rows) == 10
        assert rows[0][2:] == ["22.000", "3.000", "0", "42.500", "3.250", "0"]  # 10:00: prediction filled
        assert rows[1][5:7] == ["NULL", "NULL"]  # 10:01: not
        assert rows[3][2:4] == ["NULL", "NULL"]  # 10:03: missing reading -> NULL row
        assert rows[4][4] == "128" and rows[9][4] == "128"  # burst open from 10:04
        assert b"STATUS,CRITICAL,1\r\n" in alert.read_bytes() and verify(alert.read_bytes())

        # the retained mirror equals each file byte for byte (a client that subscribes later)
        mirror = Sink()
        late = client(cfg, "late")
        late.subscribe(topics.export(site, meter, "alert"), ExportRecord, mirror)
        late.subscribe(topics.export(site, meter, "server"), ExportRecord, mirror)
        assert wait_for(lambda: {o.file for _, o in mirror.items} == {"alert", "server"})

        def latest() -> dict:
            with mirror.lock:
                return {o.file: o for _, o in mirror.items}  # the newest record per file

        # the file is written first, then mirrored: the retained copy may be one write behind for a
        # moment, and the next publish (which this subscriber also receives) catches up
        def mirrored() -> bool:
            return all(rec.content.encode("ascii") == (out / f"{f}.txt").read_bytes() for f, rec in latest().items())

        assert wait_for(mirrored, 10), {f: rec.content[:80] for f, rec in latest().items()}
        assert all(rec.protocol_version == protocol.PROTOCOL_VERSION and rec.site == site for rec in latest().values())
        late.close()
    finally:
        stop(svc, th)
        pub.close()

    # a restart back-fills from the store and changes nothing
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "server.txt", out / "alert.txt")}
    svc2, th2 = start(cfg)
    try:
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
        # ... and the stream carries on from there: the 10:20 boundary writes the next window
        pub = client(cfg, "pub2")
        for i in range(12, 21):
            r = Reading(site=site, meter=meter, ts=T10 + i * M, seq=100 + i, flow_rate=1.0, pressure=2.0)
            pub.publish(pub.topics.reading(site, meter), r).wait_for_publish(5)
        assert wait_for(lambda: b"WINDOW,2026-03-01T10:10:00+09:00" in (out / "server.txt").read_bytes())
        rows = [x.split(",") for x in (out / "server.txt").read_bytes().decode().split("\r\n") if x.startswith("ROW,")]
        assert rows[0][2:4] == ["32.000", "3.000"] and rows[1][2:4] == ["33.000", "3.000"]  # 10:10, 10:11 back-filled
        assert rows[2][2:4] == ["1.000", "2.000"]
        pub.close()
    finally:
        stop(svc2, th2)
        watch.close()
        store.close()


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_an_absurd_reading_is_null_and_withheld_in_both_files(cfg: Settings):
    """A reading of 1e308 m³/h through the broker: valid JSON, a valid Reading, a value no device
    field can hold. Both files carry NULL and the withheld bit, within their normal width."""
    site, meter = cfg.site, cfg.meter
    out = cfg.path(cfg.exporter.out_dir)
    svc, th = start(cfg)
    pub = client(cfg, "pubx")
    try:
        invalid = Anomaly(site=site, meter=meter, kind="invalid", signal="flow_rate", severity="warning", state="open",
                          start=T10 + 3 * M, ts=T10 + 3 * M, value=1e308, threshold=2000.0,
                          message="flow_rate outside the physical range")  # what the detector says of it
        for i in range(11):  # 10:00 .. 10:10: the 10:10 reading writes the window
            r = Reading(site=site, meter=meter, ts=T10 + i * M, seq=i, flow_rate=1e308 if i == 3 else 20.0, pressure=3.0)
            pub.publish(pub.topics.reading(site, meter), r).wait_for_publish(5)
            if i == 3:
                pub.publish(pub.topics.anomaly(site, meter), invalid).wait_for_publish(5)
        server, alert = out / "server.txt", out / "alert.txt"
        assert wait_for(lambda: server.exists() and b"WINDOW,2026-03-01T10:00:00+09:00" in server.read_bytes())
        assert wait_for(lambda: alert.exists() and b"ASOF,2026-03-01T10:10:00+09:00" in alert.read_bytes())
        data = server.read_bytes()
        assert verify(data)
        rows = [line.split(",") for line in data.decode().split("\r\n") if line.startswith("ROW,")]
        assert rows[3][2:] == ["NULL", "3.000", str(protocol.FLAG_BITS["invalid"]), "NULL", "NULL", "1"]
        assert all(r[2] == "20.000" and r[7] == "0" for i, r in enumerate(rows) if i != 3)
        assert max(len(line) for line in data.split(b"\r\n")) < 120
        a = alert.read_bytes()
        assert verify(a) and b",NULL,2000.000,1\r\n" in a and max(len(line) for line in a.split(b"\r\n")) < 120
    finally:
        pub.close()
        stop(svc, th)


def test_other_meters_get_their_own_folder(cfg: Settings):
    svc, th = start(cfg)
    pub = client(cfg, "pubm")
    try:
        for i in range(12):
            r = Reading(site=cfg.site, meter="m2", ts=T10 - M + i * M, seq=i, flow_rate=5.0, pressure=1.0)
            pub.publish(pub.topics.reading(cfg.site, "m2"), r).wait_for_publish(5)
        path = cfg.path(cfg.exporter.out_dir) / cfg.site / "m2" / "server.txt"
        assert wait_for(lambda: path.exists() and b"WINDOW,2026-03-01T10:00:00+09:00" in path.read_bytes())
        assert b"METER," + cfg.site.encode() + b",m2\r\n" in path.read_bytes()
        assert not (cfg.path(cfg.exporter.out_dir) / "server.txt").exists()
    finally:
        pub.close()
        stop(svc, th)


def test_midnight_archives_the_previous_day_once_across_redelivery_and_restart(cfg: Settings):
    site, meter = cfg.site, cfg.meter
    midnight = datetime(2026, 3, 2, 0, 0, tzinfo=TZ).astimezone(UTC)
    store = SqliteStore(cfg.path(cfg.store.sqlite.path))
    store.write_readings([Reading(site=site, meter=meter, ts=midnight - 30 * M + i * M, seq=i, flow_rate=1.0, pressure=2.0)
                          for i in range(30)])  # 23:30 .. 23:59 of 2026-03-01
    store.close()
    folder = cfg.path(cfg.exporter.archive_dir) / "2026" / "03" / "01"
    svc, th = start(cfg)
    pub = client(cfg, "puba")
    try:
        assert not folder.exists()  # back-fill: event time 23:59, the day is not over
        after = [Reading(site=site, meter=meter, ts=midnight + i * M, seq=100 + i, flow_rate=1.0, pressure=2.0) for i in range(8)]
        with SqliteStore(cfg.path(cfg.store.sqlite.path)) as st:  # stored, as the detector does
            st.write_readings(after)
        for r in after + after:  # 00:00 .. 00:07 local, then all of them redelivered
            pub.publish(pub.topics.reading(site, meter), r).wait_for_publish(5)
        assert wait_for(lambda: svc.counters.get("readings") == 16)
        assert (folder / "manifest.json").exists()
        assert svc.counters.get("archives_written") == 1
        assert len((folder / "readings.csv").read_bytes().splitlines()) == 1 + 30
    finally:
        pub.close()
        stop(svc, th)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    svc2, th2 = start(cfg)  # back-fill puts event time at 00:07: the day is due, and already done
    try:
        assert svc2.archiver is not None and svc2.archiver._done_through == date(2026, 3, 1)
        assert svc2.counters.get("archives_written") == 0
        assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    finally:
        stop(svc2, th2)
