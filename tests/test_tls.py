"""TLS by default off the box: the generated CA and certificate, the TLS listener, plain MQTT on loopback only."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from app.broker import PROJECT_ACL, MosquittoProcess, TlsListener, free_port, render_config
from app.credentials import ensure_secrets
from app.tls import ensure_tls
from app.up import box_tls_listener
from shared.settings import Settings
from tests.harness import wait_for

pytestmark = pytest.mark.broker


def _client(user: str, password: str, *, ca: Path | None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return c


def _connect(c: mqtt.Client, host: str, port: int, timeout: float = 10.0) -> int | None:
    """CONNACK reason code (0: accepted), or None when no CONNACK came (TLS or TCP failed)."""
    got: dict[str, int] = {}
    ev = threading.Event()

    def on_connect(client, userdata, flags, rc, props=None):  # noqa: ANN001
        got["rc"] = rc.value if hasattr(rc, "value") else int(rc)
        ev.set()

    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError):
        return None
    c.loop_start()
    ev.wait(timeout)
    c.loop_stop()
    return got.get("rc")


def _lan_address() -> str | None:
    """A non-loopback address of this machine (the one it would use to reach the network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_ensure_tls_keeps_the_ca_and_reissues_for_a_new_name(tmp_path: Path):
    t = ensure_tls(tmp_path / "tls")
    ca, server = t.ca_cert.read_bytes(), t.server_cert.read_bytes()
    assert oct(t.ca_key.stat().st_mode & 0o777) == "0o600" and oct(t.server_key.stat().st_mode & 0o777) == "0o600"
    assert ensure_tls(tmp_path / "tls").server_cert.read_bytes() == server  # second start: nothing changes
    t2 = ensure_tls(tmp_path / "tls", ["meterbox.lan", "192.168.1.20"])
    assert t2.ca_cert.read_bytes() == ca  # devices that trust ca.crt keep trusting the broker
    cert = x509.load_pem_x509_certificate(t2.server_cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "meterbox.lan" in san.get_values_for_type(x509.DNSName)
    assert "192.168.1.20" in {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_render_config_has_the_tls_listener_after_the_plain_one(tmp_path: Path):
    tls = TlsListener("0.0.0.0", 8883, tmp_path / "ca.crt", tmp_path / "s.crt", tmp_path / "s.key")
    text = render_config(host="127.0.0.1", port=1883, password_file=tmp_path / "p", data_dir=tmp_path, log_file=tmp_path / "l",
                         tls=tls)
    lines = text.splitlines()
    assert lines[:6] == ["listener 1883 127.0.0.1", "listener 8883 0.0.0.0", f"cafile {tmp_path}/ca.crt",
                         f"certfile {tmp_path}/s.crt", f"keyfile {tmp_path}/s.key", "tls_version tlsv1.2"]
    assert not any(line.startswith("include_dir") for line in lines)  # the container's conf.d is not ours


@pytest.fixture
def tls_broker(tmp_path: Path):
    """The box's broker as `flowwatch up` starts it: generated secrets, ACL, TLS on every interface."""
    secrets = ensure_secrets(tmp_path / "secrets")
    settings = Settings(data_dir=tmp_path, broker={"tls_port": free_port()})
    tls = box_tls_listener(settings, secrets)
    b = MosquittoProcess(tmp_path / "mosquitto", users=secrets.users(), password_file=secrets.mosquitto_passwd,
                         acl_file=PROJECT_ACL, tls=tls).start()
    yield b, secrets
    b.stop()


def test_device_connects_over_tls_with_the_generated_ca_and_receives(tls_broker):
    b, secrets = tls_broker
    ca = secrets.tls_folder / "ca.crt"
    dev = _client("device", secrets.mqtt_password("device"), ca=ca)
    got: list[bytes] = []
    dev.on_message = lambda c, u, m: got.append(m.payload)
    assert _connect(dev, "127.0.0.1", b.tls.port) == 0
    dev.subscribe("flowwatch/v1/+/+/export/#", qos=1)
    dev.loop_start()
    try:
        exp = _client("exporter", secrets.mqtt_password("exporter"), ca=None)  # on the box: plain, loopback
        assert _connect(exp, "127.0.0.1", b.port) == 0
        exp.loop_start()
        assert wait_for(lambda: (exp.publish("flowwatch/v1/site1/meter1/export/alert", b"hello", qos=1), bool(got))[1], 30, 0.5)
        exp.loop_stop()
        exp.disconnect()
    finally:
        dev.loop_stop()
        dev.disconnect()
    assert got[0] == b"hello"


def test_tls_refuses_a_client_that_does_not_trust_the_ca(tls_broker, tmp_path: Path):
    b, secrets = tls_broker
    other = ensure_tls(tmp_path / "other-ca")  # a CA of someone else
    assert _connect(_client("device", secrets.mqtt_password("device"), ca=other.ca_cert), "127.0.0.1", b.tls.port) is None


def test_plain_mqtt_to_the_tls_port_gets_no_connack(tls_broker):
    b, secrets = tls_broker
    assert _connect(_client("device", secrets.mqtt_password("device"), ca=None), "127.0.0.1", b.tls.port, timeout=5) is None


def test_plain_listener_is_not_reachable_from_outside_the_box(tls_broker):
    b, secrets = tls_broker
    addr = _lan_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((addr, b.port), timeout=5).close()
    # ... while the TLS listener is (it binds every interface)
    socket.create_connection((addr, b.tls.port), timeout=5).close()
    assert _connect(_client("device", secrets.mqtt_password("device"), ca=None), addr, b.port, timeout=5) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="sets file owners: needs root (as the compose init service runs)")
def test_docker_owners_let_only_the_broker_read_the_server_key(tmp_path: Path):
    from app.central import init_central
    from app.central import set_docker_owners as central_owners
    from app.credentials import UID_MOSQUITTO, set_docker_owners

    s = ensure_secrets(tmp_path / "s")
    ensure_tls(s.tls_folder)
    s.conf_d.mkdir(parents=True)
    (s.conf_d / "bridge.conf").write_text("connection x\n")
    set_docker_owners(s)
    st = (s.tls_folder / "server.key").stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (UID_MOSQUITTO, "0o400")
    assert oct((s.tls_folder / "ca.key").stat().st_mode & 0o777) == "0o400" and (s.tls_folder / "ca.key").stat().st_uid == 0
    assert oct((s.tls_folder / "ca.crt").stat().st_mode & 0o777) == "0o444"
    assert s.conf_d.stat().st_uid == UID_MOSQUITTO and (s.conf_d / "bridge.conf").stat().st_uid == UID_MOSQUITTO
    f = init_central(tmp_path / "c", ["site1"])
    central_owners(f)
    assert f.tls.server_key.stat().st_uid == UID_MOSQUITTO and f.secrets.mosquitto_passwd.stat().st_uid == UID_MOSQUITTO
    assert oct(f.site_password_file("site1").stat().st_mode & 0o777) == "0o600" and f.site_password_file("site1").stat().st_uid == 0
