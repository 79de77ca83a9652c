"""The project's mosquitto.conf + ACL on a real mosquitto, with secrets from app.credentials.

Every user is tried on every topic, allowed and forbidden. Mosquitto drops a forbidden publish
without telling the client (QoS 1 is still acknowledged) and grants a forbidden subscription but
delivers nothing on it, so both are detected by what arrives: a publish by what the privileged
``operator`` subscriber receives, a subscription by what the user itself receives.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from app.broker import PROJECT_ACL, PROJECT_CONF, MosquittoProcess, free_port, project_setting
from app.credentials import SERVICES, USERS, ensure_secrets, mosquitto_hash
from shared.messages import Reading
from shared.topics import Topics
from tests.harness import wait_for

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]
T = Topics()
SITE, METER = "site1", "meter1"
KINDS = ("reading", "anomaly", "forecast", "thresholds/flow_rate", "thresholds/pressure", "model/flow_rate",
         "model/pressure", "command", "stored", "export/alert", "export/server", "export/forecast")


def meter_topic(kind: str) -> str:
    return T.meter(SITE, METER, kind)


NOTIFIER = {T.notifier_command(), T.notifier_state()}  # acknowledgements and silences; those in force (retained)
ALL_TOPICS = [meter_topic(k) for k in KINDS] + [T.status(u) for u in USERS] + [T.deadletter(u) for u in USERS] + sorted(NOTIFIER)


def own(user: str) -> set[str]:
    return {T.status(user), T.deadletter(user)}


# What each user may publish and receive (the "who needs what").
WRITE = {
    "collector": {meter_topic("reading")} | own("collector"),
    "detector": {meter_topic("anomaly"), meter_topic("thresholds/flow_rate"), meter_topic("thresholds/pressure"),
                 meter_topic("stored")} | own("detector"),
    "forecaster": {meter_topic("forecast")} | own("forecaster"),
    "exporter": {meter_topic("export/alert"), meter_topic("export/server"), meter_topic("export/forecast")} | own("exporter"),
    "trainer": {meter_topic("model/flow_rate"), meter_topic("model/pressure")} | own("trainer"),
    "notifier": NOTIFIER | own("notifier"),
    "device": {T.notifier_command()} | own("device"),
    "operator": {meter_topic("command"), T.notifier_command()} | own("operator"),
    "healthcheck": own("healthcheck"),  # the broker's Docker healthcheck: no ACL entry of its own
}
READ = {
    "collector": {meter_topic("stored"), T.status("detector")},  # the detector's receipts (end-to-end delivery)
    "detector": {meter_topic(k) for k in ("reading", "forecast", "command")},
    "forecaster": {meter_topic(k) for k in ("reading", "model/flow_rate", "model/pressure")},
    "exporter": {meter_topic(k) for k in ("reading", "anomaly", "forecast")} | {T.notifier_state()},
    "notifier": {meter_topic("anomaly"), T.notifier_command()} | {T.status(u) for u in USERS},
    "trainer": {meter_topic(k) for k in ("reading", "command")},
    "device": {meter_topic(k) for k in ("export/alert", "export/server", "export/forecast", "forecast")} | {T.status(u) for u in USERS},
    "operator": set(ALL_TOPICS),
    "healthcheck": set(),
}


class Client:
    """A bare paho client that records what it receives (tests only; services use shared.bus)."""

    def __init__(self, broker: MosquittoProcess, user: str | None, password: str | None) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311)
        if user:
            self.c.username_pw_set(user, password)
        self.rc = None
        self.connected = threading.Event()
        self.got: list[tuple[str, str]] = []
        self.subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload.decode()))
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.connected.wait(5)

    def _on_connect(self, c, u, flags, rc, props) -> None:
        self.rc = rc
        self.connected.set()

    def subscribe(self, filt: str) -> None:
        self.subscribed.clear()
        self.c.subscribe(filt, 1)
        assert self.subscribed.wait(5)

    def publish(self, topic: str, payload: str) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def payloads(self) -> set[str]:
        return {p for _, p in self.got}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("secure")
    s = ensure_secrets(d / "secrets")
    b = MosquittoProcess(d / "mosquitto", users=s.users(), password_file=s.mosquitto_passwd, acl_file=PROJECT_ACL).start()
    yield b, s
    b.stop()


def login(secure_broker, user: str) -> Client:
    b, s = secure_broker
    c = Client(b, user, s.mqtt_password(user))
    assert c.rc == 0, f"{user} could not connect: {c.rc}"
    return c


def test_rendered_config_keeps_the_project_settings(secure_broker) -> None:
    b, s = secure_broker
    conf = b.conf.read_text()
    for key in ("persistence", "max_queued_messages", "max_queued_bytes", "max_inflight_messages", "allow_anonymous"):
        assert f"{key} {project_setting(key)}\n" in conf
    assert project_setting("allow_anonymous") == "false"
    assert project_setting("persistence") == "true"
    assert int(project_setting("max_queued_messages")) >= 525_600  # a year of minute readings, by count
    # ... but bounded by size (what costs broker memory): 0 would be unbounded. At least 90 days of
    # one meter at 1/min, at most 64 MiB of payload per session (~220 MB of broker memory).
    reading = Reading(site="site1", meter="meter1", ts=datetime(2026, 3, 1, tzinfo=UTC), seq=123456,
                      flow_rate=123.456, pressure=4.567, source="modbus-rtu").to_json()
    assert 90 * 1440 * len(reading) <= int(project_setting("max_queued_bytes")) <= 64 * 2**20
    assert f"memory_limit {project_setting('memory_limit')}\n" in conf and int(project_setting("memory_limit")) > 0
    assert f"acl_file {PROJECT_ACL}" in conf and f"password_file {s.mosquitto_passwd}" in conf
    # the container paths of the project file are not carried over
    assert not any(" /mosquitto/" in line or " /run/flowwatch-secrets" in line for line in conf.splitlines())


def test_anonymous_and_wrong_passwords_are_refused(secure_broker) -> None:
    b, s = secure_broker
    anon = Client(b, None, None)
    assert anon.rc is not None and anon.rc != 0
    anon.close()
    wrong = Client(b, "collector", s.mqtt_password("detector"))
    assert wrong.rc is not None and wrong.rc != 0
    wrong.close()
    unknown = Client(b, "admin", "admin")
    assert unknown.rc is not None and unknown.rc != 0
    unknown.close()


@pytest.mark.parametrize("user", USERS)
def test_each_user_publishes_exactly_its_own_topics(secure_broker, user: str) -> None:
    observer = login(secure_broker, "operator")
    observer.subscribe(f"{T.prefix}/#")
    # one connection per user: the broker takes the username as client id (use_username_as_clientid)
    c = observer if user == "operator" else login(secure_broker, user)
    tag = uuid.uuid4().hex
    for topic in ALL_TOPICS:
        c.publish(topic, f"{tag}|{topic}")
    # Same publisher, same subscriber: delivered in order, so once the sentinel is in, every
    # allowed publish before it is in too, and a forbidden one would have been.
    sentinel = f"{tag}|sentinel"
    c.publish(T.status(user), sentinel)
    assert wait_for(lambda: sentinel in observer.payloads())
    arrived = {p.split("|", 1)[1] for p in observer.payloads() if p.startswith(tag) and p != sentinel}
    for conn in {c, observer}:
        conn.close()
    assert arrived == WRITE[user], f"{user}: forbidden published {arrived - WRITE[user]}, allowed lost {WRITE[user] - arrived}"


@pytest.mark.parametrize("user", USERS)
def test_each_user_receives_exactly_its_own_topics(secure_broker, user: str) -> None:
    # one connection per user: the broker takes the username as client id (use_username_as_clientid)
    writers = {u: login(secure_broker, u) for u in USERS}
    listener, observer = writers[user], writers["operator"]
    listener.subscribe(f"{T.prefix}/#")
    for filt in [meter_topic(k) for k in KINDS] + [T.all_meters("reading"), T.all_status(), T.all_deadletter()]:
        listener.subscribe(filt)  # literal and wildcard filters: all granted, delivery is filtered
    observer.subscribe(f"{T.prefix}/#")
    tag = uuid.uuid4().hex
    for topic in ALL_TOPICS:
        writer = next(u for u in USERS if topic in WRITE[u])
        writers[writer].publish(topic, f"{tag}|{topic}")
    expected_all = {f"{tag}|{t}" for t in ALL_TOPICS}
    assert wait_for(lambda: expected_all <= observer.payloads())
    expected = {f"{tag}|{t}" for t in READ[user]}
    assert wait_for(lambda: expected <= listener.payloads(), 5)
    time.sleep(0.3)  # the broker has sent everything (the observer has it); let stragglers land
    got = {p.split("|", 1)[1] for p in listener.payloads() if p.startswith(tag)}
    for c in writers.values():
        c.close()
    assert got == READ[user], f"{user}: received forbidden {got - READ[user]}, missed {READ[user] - got}"


def test_every_meter_topic_has_a_writer_and_every_service_a_user() -> None:
    for topic in ALL_TOPICS:
        if "/deadletter/" in topic or "/service/" in topic:
            continue
        assert any(topic in WRITE[u] for u in USERS), topic
    acl = PROJECT_ACL.read_text()
    for name in SERVICES + ("device", "operator"):
        assert re.search(rf"^user {name}$", acl, re.M), name


def test_secrets_are_generated_once_and_kept(tmp_path: Path) -> None:
    s1 = ensure_secrets(tmp_path / "secrets")
    first = {u: s1.mqtt_password(u) for u in USERS}
    token = s1.influx_token_file.read_text()
    passwd = s1.mosquitto_passwd.read_text()
    assert len(set(first.values())) == len(USERS) and all(len(p) >= 24 for p in first.values())
    assert (s1.mqtt_password_file("collector").stat().st_mode & 0o777) == 0o600
    s2 = ensure_secrets(tmp_path / "secrets")
    assert {u: s2.mqtt_password(u) for u in USERS} == first
    assert s2.influx_token_file.read_text() == token
    assert s2.mosquitto_passwd.read_text() == passwd  # not rehashed when nothing changed
    # a lost password is regenerated and the password file follows
    s2.mqtt_password_file("device").unlink()
    s3 = ensure_secrets(tmp_path / "secrets")
    assert s3.mqtt_password("device") != first["device"]
    assert s3.mosquitto_passwd.read_text() != passwd


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(f), "alice", "s3cret-pw"], check=True)
    line = f.read_text().strip().split(":", 1)[1]
    _, _, iters, salt, _ = line.split("$")
    import base64

    assert mosquitto_hash("s3cret-pw", salt=base64.b64decode(salt), iterations=int(iters)) == line


def test_compose_mosquitto_healthcheck_runs_against_the_real_broker(secure_broker, tmp_path: Path) -> None:
    """The healthcheck logs in (its own user, password from the secrets volume) and is answered; it
    leaves no refused login in the broker's log and does not disturb a connected client."""
    b, s = secure_broker
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert "secrets:/run/flowwatch-secrets:ro" in compose["services"]["mosquitto"]["volumes"]  # read-only

    def logged_since(offset: int) -> str:
        return b.log.read_bytes()[offset:].decode(errors="replace")

    def check(port: int, secrets_dir: Path = s.folder) -> int:
        # what compose runs: "$$" is its escape of "$"; this machine's port and secrets folder
        cmd = test[1].replace("$$", "$").replace("-p 1883", f"-p {port}").replace("/run/flowwatch-secrets", str(secrets_dir))
        assert cmd != test[1].replace("$$", "$")
        return subprocess.run(["sh", "-c", cmd], timeout=20, capture_output=True).returncode

    # the embedded device, connected with its persistent session while the checks run
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="device", clean_session=False, protocol=mqtt.MQTTv311)
    dev.username_pw_set("device", s.mqtt_password("device"))
    dropped: list[object] = []
    dev.on_disconnect = lambda c, u, flags, rc, props: dropped.append(rc)
    dev.connect(b.host, b.port)
    dev.loop_start()
    assert wait_for(dev.is_connected, 5)
    before = b.log.stat().st_size
    try:
        assert check(b.port) == 0
        assert check(b.port) == 0
        assert check(free_port()) != 0  # no broker: unhealthy
        missing = tmp_path / "no-secrets"
        missing.mkdir()
        assert check(b.port, missing) != 0  # no password to read: unhealthy, and no login attempted
        assert wait_for(lambda: logged_since(before).count("as healthcheck") >= 2, 5)
        time.sleep(0.3)
        assert dev.is_connected() and dropped == []  # the device kept its connection (and session)
    finally:
        dev.disconnect()
        dev.loop_stop()
    logged = logged_since(before)
    assert "not authori" not in logged.lower() and "<unknown> disconnected" not in logged, logged
    assert PROJECT_CONF.exists()


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_no_user_can_take_over_another_users_session(secure_broker) -> None:
    """The device connects with the detector's client id and a persistent session while the detector
    is away and readings are queued for it: it gets a session of its own ("device"), the detector's
    session and its queued readings stay, and the detector receives every one of them on return."""
    from shared.bus import Bus
    from shared.settings import MqttSettings

    b, s = secure_broker

    def settings(user: str) -> MqttSettings:
        return MqttSettings(host=b.host, port=b.port, username=user, password_file=s.mqtt_password_file(user))

    got: list[int] = []
    detector = Bus(settings("detector"), "detector")  # client id flowwatch-detector, persistent session
    detector.subscribe(T.reading(SITE, METER), Reading, lambda t, r: got.append(r.seq))
    assert detector.connect(10)
    detector.close()  # away; the broker queues for its session
    collector = login(secure_broker, "collector")
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=detector.client_id, clean_session=False, protocol=mqtt.MQTTv311)
    intruder.username_pw_set("device", s.mqtt_password("device"))
    stolen: list[str] = []
    intruder.on_message = lambda c, u, m: stolen.append(m.topic)
    intruder.connect(b.host, b.port)
    intruder.loop_start()
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(40):
        r = Reading(site=SITE, meter=METER, ts=t0 + timedelta(minutes=i), seq=i, flow_rate=1.0, pressure=3.0)
        collector.publish(T.reading(SITE, METER), r.to_json().decode())
    time.sleep(1.0)
    intruder.disconnect()
    intruder.loop_stop()
    collector.close()
    again = Bus(settings("detector"), "detector")
    again.subscribe(T.reading(SITE, METER), Reading, lambda t, r: got.append(r.seq))
    assert again.connect(10)
    assert wait_for(lambda: len(got) >= 40, 15), got
    again.close()
    assert sorted(got) == list(range(40)) and stolen == []


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_the_collector_may_publish_readings_only_for_the_configured_meters(tmp_path: Path) -> None:
    """The ACL the broker runs with (written by `flowwatch secrets init` / `flowwatch up`) lets the
    collector publish readings for the configured meter only; another meter's never arrive."""
    from app.broker import write_acl

    s = ensure_secrets(tmp_path / "secrets")
    acl = write_acl(s.acl_file, [(SITE, METER)])
    b = MosquittoProcess(tmp_path / "mosquitto", users=s.users(), password_file=s.mosquitto_passwd, acl_file=acl).start()
    try:
        observer = Client(b, "operator", s.mqtt_password("operator"))
        observer.subscribe(f"{T.prefix}/#")
        c = Client(b, "collector", s.mqtt_password("collector"))
        for meter in ("intruder", METER):  # same publisher, in order: the second arriving proves the first was dropped
            c.publish(T.reading(SITE, meter), meter)
        assert wait_for(lambda: METER in observer.payloads())
        assert observer.got == [(T.reading(SITE, METER), METER)]
        c.close(), observer.close()
    finally:
        b.stop()


def test_secrets_init_writes_the_narrowed_acl(tmp_path: Path) -> None:
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(yaml.safe_dump({"site": "plant7", "meter": "inlet2"}))
    r = subprocess.run([sys.executable, "-m", "app.cli", "secrets", "-c", str(cfg), "init", "--dir", str(tmp_path / "s")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    acl = (tmp_path / "s" / "mosquitto" / "acl").read_text()
    assert "topic write flowwatch/v1/plant7/inlet2/reading" in acl and "flowwatch/v1/+/+/reading\n" in acl  # readers keep +
    assert "topic write flowwatch/v1/+/+/reading" not in acl


def test_secrets_init_lets_the_collector_publish_for_every_listed_meter(tmp_path: Path) -> None:
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(yaml.safe_dump({"site": "plant7", "meters": [{"id": "inlet"}, {"id": "outlet", "signals": ["flow_rate"]}]}))
    r = subprocess.run([sys.executable, "-m", "app.cli", "secrets", "-c", str(cfg), "init", "--dir", str(tmp_path / "s")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    acl = (tmp_path / "s" / "mosquitto" / "acl").read_text()
    for meter in ("inlet", "outlet"):
        assert f"topic write flowwatch/v1/plant7/{meter}/reading" in acl
    assert "topic write flowwatch/v1/+/+/reading" not in acl
