"""Acknowledgements and silences: stored in both stores, and taken by the notifier from its MQTT
command topic (real Mosquitto, real SQLite store), the way a device sends them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.notifier.service import NotifierService
from shared.bus import Bus
from shared.messages import AlertAction
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
