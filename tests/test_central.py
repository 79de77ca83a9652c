"""The central tier: boxes bridge to one central broker over TLS; a recorder stores what arrives.

Every part is real: three Mosquittos (two boxes, the central one) with the generated users, ACLs,
certificates and bridge sections, each box's collector and detector as processes (tests/stack.py),
the recorder on the central broker, SQLite files.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from app.broker import PROJECT_ACL, PROJECT_CONF, MosquittoProcess, free_port, mqtt_settings, wait_port
from app.central import central_broker, init_central, render_bridge
from app.credentials import ensure_secrets
from services.recorder.service import RecorderService
from shared.messages import Band, Reading, Thresholds
from shared.settings import Settings
from shared.store.sqlite import SqliteStore
from tests.harness import wait_for
from tests.stack import ROOT, START, Stack

pytestmark = pytest.mark.broker

SITES = ("siteA", "siteB")


def _box_settings(site: str, central: MosquittoProcess, folder: Path) -> Settings:
    return Settings(site=site, central={
        "enabled": True, "host": "127.0.0.1", "port": central.tls.port, "ca_file": str(folder / "tls" / "ca.crt"),
        "password_file": str(folder / "sites" / f"{site}.password"),
    })


def _box(work: Path, site: str, central: MosquittoProcess, folder: Path) -> MosquittoProcess:
    """A box's broker as `flowwatch up` runs it, with its bridge (fast reconnects for the test)."""
    secrets = ensure_secrets(work / "secrets")
    bridge = render_bridge(_box_settings(site, central, folder), restart_s=(1, 2))
    return MosquittoProcess(work / "mosquitto", users=secrets.users(), password_file=secrets.mosquitto_passwd,
                            acl_file=PROJECT_ACL, extra_conf=bridge).start()


class Central:
    def __init__(self, tmp: Path) -> None:
        self.folder = tmp / "central"
        self.broker = central_broker(self.folder, SITES).start()
        self.db = tmp / "central.db"
        settings = Settings(data_dir=tmp / "central-var", mqtt=mqtt_settings(self.broker).model_dump(),
                            store={"sqlite": {"path": str(self.db)}})
        self.recorder = RecorderService(settings)
        self.thread = self.recorder.start_in_thread()
        assert self.recorder.ready.wait(30)
        self.reader = SqliteStore(self.db)

    def count(self, site: str, meter: str = "meter1") -> int:
        return len(self.reader.read_readings(site, meter, START, START + timedelta(days=30)))

    def close(self) -> None:
        self.recorder.stop()
        self.thread.join(30)
        self.reader.close()
        self.broker.stop()


@pytest.fixture
def central(tmp_path: Path):
    c = Central(tmp_path)
    yield c
    c.close()


def _boxes(tmp: Path, central: Central, n: int, rate: float) -> list[tuple[MosquittoProcess, Stack]]:
    out = []
    for site in SITES:
        b = _box(tmp / site, site, central.broker, central.folder)
        st = Stack(tmp / site / "stack", b, n_readings=n, rate_per_s=rate, extra={"site": site})
        st.start("detector")
        st.start("collector")
        out.append((b, st))
    return out


def _local_count(stack: Stack, site: str) -> int:
    db = stack.data / "flowwatch.db"
    if not db.exists():
        return 0
    s = SqliteStore(db)
    try:
        return len(s.read_readings(site, "meter1", START, START + timedelta(days=30)))
    finally:
        s.close()


def _stop(boxes) -> None:
    for b, st in boxes:
        st.stop_all()
        b.stop()


def _outage(tmp: Path, central: Central, *, n: int, rate: float, outage_s: float) -> None:
    boxes = _boxes(tmp, central, n, rate)
    try:
        assert wait_for(lambda: all(central.count(s) > 20 for s in SITES), 120, 0.5), \
            "nothing reached the central store: " + boxes[0][1].all_logs() + central.broker.log.read_text()[-3000:]
        central.broker.stop()  # SIGTERM: a restart (the central broker saves its sessions)
        before = {s: central.count(s) for s, (_, st) in zip(SITES, boxes, strict=True)}
        local0 = {s: _local_count(st, s) for s, (_, st) in zip(SITES, boxes, strict=True)}
        time.sleep(outage_s)  # the outage itself (nothing asserted on timing)
        # the boxes kept working alone: their own stores grew while the central tier was away
        for s, (_, st) in zip(SITES, boxes, strict=True):
            assert _local_count(st, s) > local0[s], f"box {s} stopped storing while the central broker was away"
            assert central.count(s) == before[s]
        central.broker.start()
        deadline = 180 + outage_s / 2
        assert wait_for(lambda: all(central.count(s) == n for s in SITES), deadline, 0.5), (
            f"stored at the central tier {[central.count(s) for s in SITES]} of {n} produced per site\n"
            + boxes[0][1].all_logs() + central.broker.log.read_text()[-3000:])
        for s in SITES:  # every reading, with its values, and nothing else
            got = central.reader.read_reading_records(s, "meter1", START, START + timedelta(days=30))
            assert [r.ts for r in got] == boxes[0][1].times
            assert got[0].flow_rate == pytest.approx(100.0, abs=1e-3)
    finally:
        _stop(boxes)


@pytest.mark.slow
@pytest.mark.faults
def test_two_boxes_into_one_central_store_across_a_central_restart(tmp_path: Path, central: Central):
    _outage(tmp_path, central, n=400, rate=10, outage_s=3)


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.timeout(1500)
def test_nothing_lost_across_a_ten_minute_central_outage(tmp_path: Path, central: Central):
    outage = float(os.environ.get("FLOWWATCH_CENTRAL_OUTAGE_S", "600"))
    rate = 1.0
    n = int((outage + 90) * rate)  # readings keep coming through the whole outage and after it
    _outage(tmp_path, central, n=n, rate=rate, outage_s=outage)


def _site_client(central: Central, site: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{site}-probe", protocol=mqtt.MQTTv311)
    c.username_pw_set(site, (central.folder / "sites" / f"{site}.password").read_text().strip())
    c.tls_set(ca_certs=str(central.folder / "tls" / "ca.crt"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.connect("127.0.0.1", central.broker.tls.port)
    c.loop_start()
    return c


def test_a_site_user_cannot_publish_under_another_site(central: Central):
    c = _site_client(central, "siteA")
    try:
        ts = datetime(2026, 3, 2, tzinfo=UTC)
        forged = Reading(site="siteB", meter="meter1", ts=ts, seq=1, flow_rate=999.0, pressure=1.0)
        c.publish("flowwatch/v1/siteB/meter1/reading", forged.model_dump_json(), qos=1).wait_for_publish(10)
        own = Reading(site="siteA", meter="meter1", ts=ts + timedelta(minutes=1), seq=2, flow_rate=5.0, pressure=1.0)
        c.publish("flowwatch/v1/siteA/meter1/reading", own.model_dump_json(), qos=1).wait_for_publish(10)
        assert wait_for(lambda: central.count("siteA") == 1, 30, 0.2)  # its own site: stored
        assert central.count("siteB") == 0  # the other site: dropped by the broker (ACL)
    finally:
        c.loop_stop()
        c.disconnect()


def test_the_central_store_keeps_each_meters_thresholds(central: Central):
    """The thresholds a box publishes (retained, bridged by default) reach the central store, so the
    central dashboards draw the bands; another site's are refused by the ACL as its readings are."""
    c = _site_client(central, "siteA")
    try:
        at = datetime(2026, 3, 2, tzinfo=UTC)
        sent = {}
        for site in ("siteA", "siteB"):
            t = Thresholds(site=site, meter="meter1", signal="pressure", computed_at=at, method="learned", sample_days=14,
                           bands=(Band(hour=3, daytype="weekday", lower=2.5, upper=4.0),))
            c.publish(f"flowwatch/v1/{site}/meter1/thresholds/pressure", t.model_dump_json(), qos=1, retain=True).wait_for_publish(10)
            sent[site] = t
        assert wait_for(lambda: central.reader.latest_thresholds("siteA", "meter1", "pressure") is not None, 30, 0.2)
        got = central.reader.latest_thresholds("siteA", "meter1", "pressure")
        assert got.band_for(3, False) == sent["siteA"].bands[0] and got.sample_days == 14
        assert central.recorder.counters.get("thresholds_stored") == 1
        assert central.reader.latest_thresholds("siteB", "meter1", "pressure") is None  # not its site: dropped
    finally:
        c.loop_stop()
        c.disconnect()


def test_a_site_password_does_not_work_for_another_site(central: Central):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="x", protocol=mqtt.MQTTv311)
    c.username_pw_set("siteB", (central.folder / "sites" / "siteA.password").read_text().strip())
    c.tls_set(ca_certs=str(central.folder / "tls" / "ca.crt"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    rc: list = []
    c.on_connect = lambda cl, u, f, r, p=None: rc.append(r)
    c.connect("127.0.0.1", central.broker.tls.port)
    c.loop_start()
    try:
        assert wait_for(lambda: bool(rc), 15, 0.1)
        assert rc[0].is_failure
    finally:
        c.loop_stop()


def test_central_init_keeps_secrets_and_drops_unlisted_sites(tmp_path: Path):
    f = init_central(tmp_path / "c", ["s1", "s2"])
    pw, ca = f.site_password("s1"), f.tls.ca_cert.read_bytes()
    f = init_central(tmp_path / "c", ["s1", "s3"])
    assert f.site_password("s1") == pw and f.tls.ca_cert.read_bytes() == ca
    assert f.sites() == ["s1", "s3"]
    users = [line.split(":")[0] for line in f.secrets.mosquitto_passwd.read_text().splitlines()]
    assert sorted(users) == ["healthcheck", "operator", "recorder", "s1", "s3"]
    with pytest.raises(ValueError, match="reserved"):
        init_central(tmp_path / "c", ["recorder"])


def test_bridge_section_sends_only_this_sites_topics_out(tmp_path: Path):
    f = init_central(tmp_path / "c", ["siteA"])
    s = Settings(site="siteA", central={"enabled": True, "host": "central.example", "ca_file": str(f.tls.ca_cert),
                                        "password_file": str(f.site_password_file("siteA"))})
    text = render_bridge(s)
    topics = [line for line in text.splitlines() if line.startswith("topic ")]
    assert topics and all(t.split()[2] == "out" and t.endswith("flowwatch/v1/siteA/ flowwatch/v1/siteA/") for t in topics)
    for line in ("cleansession false", "local_cleansession false", "try_private true", "bridge_insecure false",
                 "address central.example:8883", f"remote_password {f.site_password('siteA')}"):
        assert line in text.splitlines()
    with pytest.raises(ValueError, match="central.enabled needs"):
        Settings(central={"enabled": True, "host": "x"})


def test_compose_broker_config_serves_tls_and_bridges_with_what_secrets_init_writes(tmp_path: Path, central: Central):
    """The project mosquitto.conf as the compose broker runs it (container paths mapped to folders
    here), with the files `flowwatch secrets init` writes for a box whose config enables the bridge."""
    cfg = tmp_path / "box.yaml"
    cfg.write_text(yaml.safe_dump({"site": "siteA", "central": {
        "enabled": True, "host": "127.0.0.1", "port": central.broker.tls.port, "ca_file": str(central.folder / "tls" / "ca.crt"),
        "password_file": str(central.folder / "sites" / "siteA.password")}}))
    sec = tmp_path / "secrets"
    r = subprocess.run([sys.executable, "-m", "app.cli", "secrets", "-c", str(cfg), "init", "--dir", str(sec)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    bridge = sec / "mosquitto" / "conf.d" / "bridge.conf"
    assert oct(bridge.stat().st_mode & 0o777) == "0o600" and "connection central-siteA" in bridge.read_text()
    assert (sec / "mosquitto" / "conf.d" / "central-ca.crt").read_bytes() == (central.folder / "tls" / "ca.crt").read_bytes()
    plain, tls = free_port(), free_port()
    conf = PROJECT_CONF.read_text().replace("/run/flowwatch-secrets", str(sec)).replace("/mosquitto/data", str(tmp_path / "data"))
    conf = re.sub(r"^listener 1883$", f"listener {plain} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^listener 8883$", f"listener {tls} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^log_dest stdout$", f"log_dest file {tmp_path / 'box.log'}", conf, flags=re.M)
    if os.geteuid() == 0:
        conf = "user root\n" + conf
    (tmp_path / "data").mkdir()
    (tmp_path / "box.conf").write_text(conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "box.conf")], stderr=subprocess.PIPE)
    try:
        assert wait_port("127.0.0.1", tls, 10), proc.stderr.read1().decode() if proc.poll() is not None else "no TLS listener"
        dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="device", protocol=mqtt.MQTTv311)
        dev.username_pw_set("device", (sec / "mqtt" / "device.password").read_text().strip())
        dev.tls_set(ca_certs=str(sec / "tls" / "ca.crt"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        rc: list = []
        dev.on_connect = lambda cl, u, f, r, p=None: rc.append(r)
        dev.connect("127.0.0.1", tls)
        dev.loop_start()
        assert wait_for(lambda: bool(rc), 15, 0.1) and not rc[0].is_failure
        dev.loop_stop()
        dev.disconnect()
        # the collector publishes on the box (plain, loopback); the bridge carries it to the central store
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="collector", protocol=mqtt.MQTTv311)
        c.username_pw_set("collector", (sec / "mqtt" / "collector.password").read_text().strip())
        c.connect("127.0.0.1", plain)
        c.loop_start()
        ts = datetime(2026, 3, 2, tzinfo=UTC)
        msg = Reading(site="siteA", meter="meter1", ts=ts, seq=1, flow_rate=7.0, pressure=1.0)
        c.publish("flowwatch/v1/siteA/meter1/reading", msg.model_dump_json(), qos=1).wait_for_publish(10)
        assert wait_for(lambda: central.count("siteA") == 1, 60, 0.2), (tmp_path / "box.log").read_text()[-2000:]
        c.loop_stop()
        c.disconnect()
    finally:
        proc.terminate()
        proc.wait(10)


def test_up_adds_the_bridge_and_keeps_the_broker_config_private(tmp_path: Path):
    from app.up import box_bridge

    f = init_central(tmp_path / "c", ["siteA"])
    assert box_bridge(Settings(site="siteA")) == ""  # off by default
    s = Settings(site="siteA", central={"enabled": True, "host": "central.example", "ca_file": str(f.tls.ca_cert),
                                        "password_file": str(f.site_password_file("siteA"))})
    b = MosquittoProcess(tmp_path / "m", extra_conf=box_bridge(s))
    assert "connection central-siteA" in b.conf.read_text()
    assert oct(b.conf.stat().st_mode & 0o777) == "0o600"  # it holds the site's central password


def test_central_init_command_takes_sites_and_names_from_the_environment(tmp_path: Path):
    from cryptography import x509

    env = {**os.environ, "FLOWWATCH_CENTRAL_SITES": "a b", "FLOWWATCH_CENTRAL_NAMES": "central.example.org 10.0.0.5"}
    r = subprocess.run([sys.executable, "-m", "app.cli", "central", "init", "--dir", str(tmp_path / "c")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    f = init_central(tmp_path / "c", ["a", "b"])
    assert f.sites() == ["a", "b"]
    san = x509.load_pem_x509_certificate(f.tls.server_cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "central.example.org" in san.get_values_for_type(x509.DNSName)
    r = subprocess.run([sys.executable, "-m", "app.cli", "central", "init", "--dir", str(tmp_path / "d")], cwd=ROOT,
                       env={k: v for k, v in env.items() if k != "FLOWWATCH_CENTRAL_SITES"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no sites" in r.stdout
