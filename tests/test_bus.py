"""The bus through a real Mosquitto: validation, dead-letter, persistent sessions, reconnect."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.bus import Bus
from shared.messages import DeadLetter, Reading
from shared.topics import TopicError, Topics
from tests.harness import wait_for

T0 = datetime(2026, 3, 1, tzinfo=UTC)
topics = Topics()


def reading(i, meter="m1"):
    return Reading(site="s1", meter=meter, ts=T0 + timedelta(minutes=i), seq=i, flow_rate=float(i), pressure=3.0)


class Sink:
    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def __call__(self, topic, obj):
        with self.lock:
            self.items.append(obj)


def make(mqtt, name, **kw):
    b = Bus(mqtt, name, **kw)
    assert b.connect(wait_s=10)
    return b


def test_malformed_is_dead_lettered_and_stream_goes_on(mqtt):
    got, dead = Sink(), Sink()
    sub = make(mqtt, "sub-malformed")
    sub.subscribe(topics.reading("s1", "m1"), Reading, got)
    watcher = make(mqtt, "watch-malformed")
    watcher.subscribe(topics.deadletter("sub-malformed"), DeadLetter, dead)
    pub = make(mqtt, "pub-malformed")
    t = topics.reading("s1", "m1")
    pub.publish(t, b"{not json").wait_for_publish(5)
    pub.publish(t, json.dumps({"site": "s1", "meter": "m1", "ts": "2026-03-01T00:00:00Z", "seq": 1, "flow_rate": "lots"}).encode()).wait_for_publish(5)
    pub.publish(t, b"\xff\xfe" * 10).wait_for_publish(5)
    pub.publish(t, b"x" * (mqtt.max_payload_bytes + 1)).wait_for_publish(5)
    pub.publish(t, reading(2)).wait_for_publish(5)
    assert wait_for(lambda: len(got.items) == 1 and len(dead.items) == 4)
    assert got.items[0] == reading(2)
    assert sub.counters.get("rejected") == 4 and sub.counters.get("dead_lettered") == 4
    reasons = [d.reason for d in dead.items]
    assert any("flow_rate" in r for r in reasons) and any("oversized" in r for r in reasons)
    assert bytes.fromhex(dead.items[0].payload_hex) == b"{not json"
    for b in (sub, watcher, pub):
        b.close()


def test_handler_error_is_dead_lettered(mqtt):
    dead, calls = Sink(), []

    def handler(topic, r):
        calls.append(r.seq)
        if r.seq == 1:
            raise RuntimeError("boom")

    sub = make(mqtt, "sub-boom")
    sub.subscribe(topics.reading("s1", "m9"), Reading, handler)
    watcher = make(mqtt, "watch-boom")
    watcher.subscribe(topics.deadletter("sub-boom"), DeadLetter, dead)
    pub = make(mqtt, "pub-boom")
    for i in (1, 2):
        pub.publish(topics.reading("s1", "m9"), reading(i, "m9")).wait_for_publish(5)
    assert wait_for(lambda: calls == [1, 2] and len(dead.items) == 1)
    assert "boom" in dead.items[0].reason
    for b in (sub, watcher, pub):
        b.close()


def test_persistent_session_gets_messages_published_while_away(mqtt):
    got = Sink()
    sub = make(mqtt, "sub-persist")
    sub.subscribe(topics.reading("s1", "m2"), Reading, got)
    time.sleep(0.2)
    sub.close()
    pub = make(mqtt, "pub-persist")
    for i in range(50):
        pub.publish(topics.reading("s1", "m2"), reading(i, "m2"))
    pub.client.publish(topics.reading("s1", "m2"), reading(50, "m2").to_json(), qos=1).wait_for_publish(5)
    pub.close()
    again = Bus(mqtt, "sub-persist")  # same client id, new process-equivalent
    again.subscribe(topics.reading("s1", "m2"), Reading, got)
    assert again.connect(wait_s=10)
    assert wait_for(lambda: len(got.items) == 51)
    assert [r.seq for r in got.items] == list(range(51))
    again.close()


def test_reconnects_after_broker_restart(fresh_broker):
    from app.broker import mqtt_settings

    s = mqtt_settings(fresh_broker)
    got = Sink()
    sub = make(s, "sub-restart")
    sub.subscribe(topics.reading("s1", "m3"), Reading, got)
    fresh_broker.kill()
    assert wait_for(lambda: not sub.connected, 15)
    fresh_broker.start()
    assert sub.wait_connected(20), "bus did not reconnect"
    pub = make(s, "pub-restart")
    pub.publish(topics.reading("s1", "m3"), reading(1, "m3")).wait_for_publish(5)
    assert wait_for(lambda: len(got.items) == 1), "subscription was not renewed on reconnect"
    sub.close()
    pub.close()


def test_publish_refuses_wildcards(mqtt):
    b = Bus(mqtt, "pub-wild")
    with pytest.raises(TopicError):
        b.publish("flowwatch/v1/+/m/reading", reading(1))


def test_wrong_password_is_reported(mqtt, caplog):
    bad = mqtt.model_copy(update={"password": None, "password_file": None, "username": "nobody"})
    b = Bus(bad, "intruder")
    assert not b.connect(wait_s=2)
    assert b.counters.get("mqtt_connect_refused") >= 1
    assert any("refused" in r.message for r in caplog.records)
    b.client.loop_stop()


def test_connections_send_small_packets_at_once_nodelay(mqtt):
    """TCP_NODELAY on the bus's socket, after a reconnect too: with Nagle's algorithm each small PUBACK
    or receipt waited for the peer's delayed ACK, and the collector -> detector chain ran at a third
    of its speed (issue 15)."""
    import socket

    b = make(mqtt, "nodelay")
    try:
        assert wait_for(lambda: b.connected, 10)
        assert b.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        b.client.reconnect()
        assert wait_for(lambda: b.connected and b.client.socket() is not None, 20)
        assert b.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        b.close()
