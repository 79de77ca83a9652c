"""Store-and-forward through a real broker outage: every reading arrives, in order, none twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.broker import mqtt_settings
from tests.harness import wait_for
from tests.test_collector_service import Listener, collector_settings, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_broker_down_mid_stream(tmp_path, fresh_broker, how):
    mqtt = mqtt_settings(fresh_broker)
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    lis = Listener(mqtt, "outage", f"lis-outage-{how}", receipts=True)  # stands in for the detector
    # 10 readings per second of wall time: the broker goes down between two of them.
    s = collector_settings(tmp_path, mqtt, "outage", source="simulator", speed=600, simulator={"seed": 3, "start": t0.isoformat()})
    svc, t = start(s)
    try:
        assert wait_for(lambda: len(lis.readings) >= 20)
        # the receipts keep up: at most a few readings wait for theirs, none for its PUBACK
        assert wait_for(lambda: len(svc.spool) <= 5 and svc.forwarder.in_flight() == 0, 20)
        unconfirmed = len(svc.spool)  # these may be sent again after the outage (at-least-once)
        fresh_broker.kill() if how == "kill" else fresh_broker.stop()
        spooled = svc.counters.get("spooled")
        assert wait_for(lambda: svc.counters.get("spooled") >= spooled + 25, 20)
        assert len(svc.spool) >= 20, "readings made while the broker was down must wait in the spool"
        fresh_broker.start()
        target = svc.counters.get("spooled") + 15
        assert wait_for(lambda: len({r.seq for r in lis.readings}) >= target, 30), (len(lis.readings), svc.counters.snapshot())
    finally:
        stop(svc, t)
        lis.close()
    seqs = [r.seq for r in lis.readings]
    first = list(dict.fromkeys(seqs))
    assert first == list(range(len(first))), "a reading is missing or out of order"
    by_seq: dict = {}
    for r in lis.readings:
        by_seq.setdefault(r.seq, r)
    assert [by_seq[i].ts for i in range(len(first))] == [t0 + timedelta(minutes=i) for i in range(len(first))]
    assert svc.counters.get("dropped") == 0 and svc.counters.get("mqtt_disconnects") >= 1
    # Readings leave the spool on the detector's receipt, not on PUBACK: the few the broker had
    # acknowledged but whose receipt had not come back when it went are sent again (at-least-once;
    # every consumer writes idempotently by (site, meter, ts)). Nothing else is published twice.
    extra = svc.counters.get("sent") - svc.counters.get("spooled")
    assert 0 <= extra <= unconfirmed + 5, (unconfirmed, svc.counters.snapshot())
    fresh = [seq for seq, dup in lis.deliveries if not dup]
    assert sorted(set(fresh)) == list(range(len(first))) and len(fresh) - len(set(fresh)) <= extra
    # Mosquitto restores its session state after a restart and may deliver again, with the DUP flag,
    # a message the subscriber had acknowledged just before.
    redelivered = [seq for seq, dup in lis.deliveries if dup]
    assert len(redelivered) <= 15 and all(seq < len(first) for seq in redelivered)
