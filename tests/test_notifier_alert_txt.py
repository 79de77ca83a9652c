"""Acknowledgements and silences in alert.txt: the protocol lines (pure) and the exporter taking the
notifier's retained state through a real Mosquitto."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.exporter import protocol
from services.exporter.service import ExporterService
from shared.bus import Bus
from shared.messages import AlertAction, AlertState, Anomaly, Reading, alert_id
from shared.settings import Settings
from tests.exporter_check import verify
from tests.harness import wait_for

TZ = ZoneInfo("Asia/Seoul")
T10 = datetime(2026, 3, 1, 10, 0, tzinfo=TZ).astimezone(UTC)


def burst(site: str, meter: str) -> Anomaly:
    return Anomaly(site=site, meter=meter, kind="burst", signal="both", severity="critical", state="open",
                   start=T10, ts=T10, value=182.5, threshold=120.0)


def test_ack_and_silence_lines() -> None:
    a = burst("s1", "m1")
    plain = protocol.compose_alert("s1", "m1", T10, [a], TZ)
    assert protocol.compose_alert("s1", "m1", T10, [a], TZ, state=AlertState(ts=T10)) == plain  # nothing to show: unchanged
    sil = AlertAction(id="x", action="silence", ts=T10, site="s1", meter="m1", until=T10 + timedelta(hours=2))
    other = AlertAction(id="y", action="silence", ts=T10, site="s1", meter="m2", until=T10 + timedelta(hours=2))
    st = AlertState(ts=T10, acked=(alert_id("s1", "m1", "burst", "both", T10),), silences=(sil, other))
    data = protocol.compose_alert("s1", "m1", T10, [a], TZ, state=st)
    assert verify(data)
    lines = data.decode().split("\r\n")
    assert "ACK,burst,both,2026-03-01T10:00:00+09:00" in lines
    assert "SILENCED,ALL,2026-03-01T12:00:00+09:00" in lines
    assert sum(line.startswith("SILENCED") for line in lines) == 1  # m2's silence is not m1's


def test_exporter_shows_the_notifiers_state(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    cfg = settings.model_copy(update={"site": f"s{tag}", "meter": "m1",
                                      "mqtt": settings.mqtt.model_copy(update={"client_id_prefix": f"t{tag}"})})
    svc = ExporterService(cfg)
    svc.start_in_thread()
    pub = Bus(cfg.mqtt, "pub", client_id=f"t{tag}-pub", persistent=False)
    try:
        assert svc.ready.wait(30) and pub.connect(wait_s=10)
        a = burst(cfg.site, "m1")
        pub.publish(pub.topics.reading(cfg.site, "m1"), Reading(site=cfg.site, meter="m1", ts=T10, seq=1, flow_rate=1.0, pressure=3.0))
        pub.publish(pub.topics.anomaly(cfg.site, "m1"), a).wait_for_publish(5)
        alert = cfg.path(cfg.exporter.out_dir) / "alert.txt"
        assert wait_for(lambda: alert.exists() and b"ALERT,burst" in alert.read_bytes())
        assert b"ACK," not in alert.read_bytes()
        st = AlertState(ts=datetime.now(UTC), acked=(alert_id(cfg.site, "m1", "burst", "both", T10),))
        pub.publish(pub.topics.notifier_state(), st).wait_for_publish(5)
        assert wait_for(lambda: b"ACK,burst,both,2026-03-01T10:00:00+09:00\r\n" in alert.read_bytes())
        assert verify(alert.read_bytes())
    finally:
        pub.close()
        svc.stop()
