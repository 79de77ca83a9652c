"""Acknowledgements and silences: stored in both stores, and taken by the notifier from its MQTT
command topic (real Mosquitto, real SQLite store), the way a device sends them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from services.notifier.service import NotifierService
from shared.bus import Bus
from shared.health import check
from shared.messages import AlertAction
from shared.settings.notifier import QuietHours
from shared.store import open_store
from tests.harness import wait_for


def test_store_keeps_alert_actions_and_service_status(store) -> None:
    t = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    ack = AlertAction(id="a1", action="ack", ts=t, alert_id="0123456789", by="ops")
    sil = AlertAction(id="s1", action="silence", ts=t + timedelta(seconds=1), site="site1", meter="m1", kind="night_flow",
                      until=t + timedelta(hours=2), note="valve work")
    assert store.write_alert_actions([ack, sil]) == 2
    store.write_alert_actions([ack])  # a redelivery overwrites itself
    assert store.read_alert_actions(t - timedelta(days=1)) == [ack, sil]
    assert store.read_alert_actions(t + timedelta(seconds=1)) == [sil]
    assert store.write_service_status([("detector", True, t), ("exporter", False, t)]) == 2


def test_device_acks_and_silences_on_the_command_topic(settings) -> None:
    svc = NotifierService(settings)
    svc.start_in_thread()
    bus = None
    try:
        assert svc.ready.wait(30)
        bus = Bus(settings.mqtt, "device-test", persistent=False)
        assert bus.connect(wait_s=10)
        now = datetime.now(UTC).replace(microsecond=0)
        sil = AlertAction(id=uuid.uuid4().hex, action="silence", ts=now, site="site1", meter="meter1", until=now + timedelta(hours=1), by="device")
        ack = AlertAction(id=uuid.uuid4().hex, action="ack", ts=now, alert_id="abcdef0123", by="device")
        for a in (sil, ack):
            bus.publish(bus.topics.notifier_command(), a).wait_for_publish(5)
        assert wait_for(lambda: svc.actions.silenced("site1", "meter1", "burst", now + timedelta(minutes=1)) is not None
                        and "abcdef0123" in svc.actions.acked, 30)
        # a bad command (a silence without meter or end) is dead-lettered and counted; the stream goes on
        bus.publish(bus.topics.notifier_command(), b'{"id": "x", "action": "silence", "ts": "2026-03-02T00:00:00Z", "site": "site1"}')
        later = AlertAction(id=uuid.uuid4().hex, action="unsilence", ts=now + timedelta(seconds=1), site="site1", meter="meter1")
        bus.publish(bus.topics.notifier_command(), later).wait_for_publish(5)
        assert wait_for(lambda: svc.actions.silenced("site1", "meter1", "burst", now + timedelta(minutes=1)) is None, 30)
        assert svc.counters.snapshot().get("rejected", 0) >= 1, svc.counters.snapshot()
        st = open_store(settings)
        try:
            assert {a.id for a in st.read_alert_actions(now - timedelta(minutes=1))} >= {sil.id, ack.id, later.id}
        finally:
            st.close()
    finally:
        if bus is not None:
            bus.close()
        svc.stop()


class Hook:
    """A real HTTP receiver that records webhook bodies."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.got: list[dict] = []
        got = self.got

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def test_flapping_is_summarised_and_quiet_hours_hold_warnings(settings) -> None:
    from shared.messages import Anomaly

    hook = Hook()
    now = datetime.now(UTC).replace(microsecond=0)
    local = now.astimezone(settings.tz)
    quiet = {"start": (local - timedelta(hours=1)).strftime("%H:%M"), "end": (local + timedelta(hours=1)).strftime("%H:%M")}
    cfg = settings.model_copy(update={"notifier": settings.notifier.model_validate({
        "channels": {"hook": {"type": "webhook", "url": hook.url}},
        "routes": [{"channels": ["hook"]}],
        "flap_max": 2, "flap_window_minutes": 0.25, "retry_min_s": 1, "quiet_hours": None,
    })})
    svc = NotifierService(cfg)
    svc.start_in_thread()
    bus = None
    try:
        assert svc.ready.wait(30)
        bus = Bus(cfg.mqtt, "flap-test", persistent=False)
        assert bus.connect(wait_s=10)
        site = f"s{uuid.uuid4().hex[:6]}"
        topic = bus.topics.anomaly(site, "m1")
        # a night_flow warning that opens and closes four times: 8 transitions, flap_max 2 per window
        for i in range(4):
            start = now - timedelta(hours=4 - i)
            a = Anomaly(site=site, meter="m1", kind="night_flow", signal="flow_rate", severity="warning", state="open", start=start, ts=start)
            bus.publish(topic, a)
            bus.publish(topic, a.model_copy(update={"state": "closed", "end": start + timedelta(minutes=10), "ts": start + timedelta(minutes=10)}))
        assert wait_for(lambda: any(g["transition"] == "summary" for g in hook.got), 60), hook.got
        kinds = [g["transition"] for g in hook.got]
        assert kinds == ["open", "close", "summary"], kinds
        assert hook.got[2]["count"] == 6 and "6 held back" in hook.got[2]["subject"]
    finally:
        if bus is not None:
            bus.close()
        svc.stop()
        hook.close()

    # quiet hours now: a warning waits until their end, a critical goes at once
    hook = Hook()
    cfg = cfg.model_copy(update={"notifier": cfg.notifier.model_copy(update={
        "channels": {"hook": cfg.notifier.channels["hook"].model_copy(update={"url": hook.url})},
        "quiet_hours": QuietHours(**quiet)})})
    svc = NotifierService(cfg)
    svc.start_in_thread()
    bus = None
    try:
        assert svc.ready.wait(30)
        bus = Bus(cfg.mqtt, "quiet-test", persistent=False)
        assert bus.connect(wait_s=10)
        site = f"q{uuid.uuid4().hex[:6]}"
        topic = bus.topics.anomaly(site, "m1")
        warn = Anomaly(site=site, meter="m1", kind="threshold", signal="flow_rate", severity="warning", state="open", start=now, ts=now)
        crit = Anomaly(site=site, meter="m1", kind="burst", signal="both", severity="critical", state="open", start=now, ts=now)
        bus.publish(topic, warn)
        bus.publish(topic, crit)
        assert wait_for(lambda: any(g["kind"] == "burst" for g in hook.got), 30), hook.got
        rows = {r["key"].split(":")[0]: r for r in svc.outbox.rows()}
        held = rows[alert_id_of(warn)]
        assert held["state"] == "pending" and held["due"] > now.timestamp() + 50 * 60  # until the end of quiet hours
        assert [g["kind"] for g in hook.got] == ["burst"]
    finally:
        if bus is not None:
            bus.close()
        svc.stop()
        hook.close()


def alert_id_of(a) -> str:  # noqa: ANN001
    from shared.messages import alert_id

    return alert_id(a.site, a.meter, a.kind, a.signal, a.start)


def test_alerts_cli(tmp_path, capsys) -> None:
    import yaml

    from app.alerts import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "var"), "site": "site1", "meter": "meter1"}))
    assert main(["silence", "--meter", "meter1", "--for", "2h", "--by", "kim", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert main(["list", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "no open alerts" in out and "silenced: site1/meter1 kind * until" in out and "by kim" in out
    assert main(["silence", "--meter", "meter1", "-c", str(cfg)]) == 2
    assert "--for" in capsys.readouterr().err
    assert main(["silence", "--meter", "meter1", "--for", "2 weeks", "-c", str(cfg)]) == 2
    assert "30m, 2h, 1d" in capsys.readouterr().err
    assert main(["ack", "0123456789", "-c", str(cfg)]) == 2
    assert "no alert '0123456789'" in capsys.readouterr().err
    assert main(["unsilence", "--meter", "meter1", "-c", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["list", "--outbox", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "silenced:" not in out and "none yet" in out


def test_notifications_go_on_while_the_store_is_down(settings) -> None:
    """The store (InfluxDB here, nothing listening) is secondary: an alert is still sent, and a
    silence sent on MQTT meanwhile is in force at once."""
    from app.broker import free_port
    from shared.messages import Anomaly

    hook = Hook()
    cfg = settings.model_copy(update={
        "store": settings.store.model_validate({"backend": "influxdb", "influxdb": {
            "url": f"http://127.0.0.1:{free_port()}", "retries": 0, "timeout_s": 2, "create_database": False}}),
        "notifier": settings.notifier.model_validate({"channels": {"hook": {"type": "webhook", "url": hook.url}},
                                                      "routes": [{"channels": ["hook"]}], "command_poll_s": 1}),
        "mqtt": settings.mqtt.model_copy(update={"client_id_prefix": f"d{uuid.uuid4().hex[:6]}"}),
    })
    svc = NotifierService(cfg)
    svc.start_in_thread()
    bus = None
    try:
        assert svc.ready.wait(30)
        bus = Bus(cfg.mqtt, "down-test", persistent=False)
        assert bus.connect(wait_s=10)
        now = datetime.now(UTC)
        site = f"d{uuid.uuid4().hex[:6]}"
        a = Anomaly(site=site, meter="m1", kind="burst", signal="both", severity="critical", state="open", start=now, ts=now)
        bus.publish(bus.topics.anomaly(site, "m1"), a)
        assert wait_for(lambda: [g["kind"] for g in hook.got] == ["burst"], 30), hook.got
        sil = AlertAction(id=uuid.uuid4().hex, action="silence", ts=now, site=site, meter="m2", until=now + timedelta(hours=1))
        bus.publish(bus.topics.notifier_command(), sil)
        assert wait_for(lambda: svc.actions.silenced(site, "m2", "burst", now + timedelta(minutes=1)) is not None, 30)
        assert svc.counters.snapshot().get("store_errors", 0) >= 1
        # ... and the notifier is healthy: the store is down (its adapter says so), but the notifier's
        # work goes on, so its health check must not fail for it (a restart would only interrupt it)
        assert svc.store.failing_since is not None
        assert "store" not in svc.failing(), svc.failing()
        svc.publish_status()
        # judged an hour on (every failure state's limit passed; the heartbeat allowed to be that old)
        healthy, why = check(cfg.data_dir, "notifier", stale_s=7200, now=time.time() + 3600)
        assert healthy, why
    finally:
        if bus is not None:
            bus.close()
        svc.stop()
        hook.close()
