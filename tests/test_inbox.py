"""The inbox through a real Mosquitto: handlers off paho's thread, in order; a fault in the message is
dead-lettered and acknowledged, a fault in the infrastructure is retried and redelivered, never
dead-lettered; a handler stuck on a locked store does not cost the connection."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from shared.bus import Bus
from shared.messages import DeadLetter, Reading
from shared.store import StoreError, StoreUnavailable
from tests.harness import wait_for
from tests.test_bus import Sink, make, reading, topics

pytestmark = pytest.mark.broker


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_handlers_run_in_one_worker_off_the_network_thread_in_order(mqtt):
    seen: list[tuple[int, str]] = []
    name = unique("inbox-order")
    sub = make(mqtt, name)
    sub.subscribe(topics.reading("s1", "io"), Reading, lambda t, r: seen.append((r.seq, threading.current_thread().name)))
    pub = make(mqtt, unique("pub-order"))
    for i in range(200):
        pub.publish(topics.reading("s1", "io"), reading(i, "io"))
    assert wait_for(lambda: len(seen) == 200)
    assert [s for s, _ in seen] == list(range(200))
    assert {t for _, t in seen} == {f"{name}-inbox"}
    sub.close(), pub.close()


def test_infrastructure_fault_is_retried_in_place_not_dead_lettered(mqtt):
    calls: list[int] = []
    dead = Sink()
    name = unique("inbox-infra")

    def handler(topic, r):
        calls.append(r.seq)
        if r.seq == 1 and calls.count(1) <= 3:
            raise StoreUnavailable("store away (test)")

    sub = make(mqtt, name)
    sub.subscribe(topics.reading("s1", "ii"), Reading, handler)
    watch = make(mqtt, unique("watch-infra"))
    watch.subscribe(topics.deadletter(name), DeadLetter, dead)
    pub = make(mqtt, unique("pub-infra"))
    for i in range(3):
        pub.publish(topics.reading("s1", "ii"), reading(i, "ii"))
    assert wait_for(lambda: calls[-1:] == [2], 20)
    assert calls == [0, 1, 1, 1, 1, 2]  # retried in place, the order kept
    assert sub.counters.get("infra_retries") == 3 and sub.counters.get("handled") == 3
    time.sleep(0.3)
    assert dead.items == [] and sub.counters.get("dead_lettered") == 0
    for b in (sub, watch, pub):
        b.close()


def test_infrastructure_fault_at_a_stop_leaves_the_message_to_be_redelivered(mqtt):
    name = unique("inbox-redeliver")
    sub = make(mqtt, name)
    tried: list[int] = []

    def broken(topic, r):
        tried.append(r.seq)
        raise StoreError("disk full (test)")

    sub.subscribe(topics.reading("s1", "ir"), Reading, broken)
    pub = make(mqtt, unique("pub-redeliver"))
    for i in range(2):
        pub.publish(topics.reading("s1", "ir"), reading(i, "ir")).wait_for_publish(5)
    assert wait_for(lambda: len(tried) >= 2)
    sub.close()  # the process stops while the store is away: nothing was acknowledged
    got = Sink()
    again = Bus(mqtt, name)
    again.subscribe(topics.reading("s1", "ir"), Reading, got)
    assert again.connect(10)
    assert wait_for(lambda: [r.seq for r in got.items] == [0, 1], 20), [r.seq for r in got.items]
    assert again.counters.get("dead_lettered") == 0 and sub.counters.get("dead_lettered") == 0
    again.close(), pub.close()


def test_fault_in_the_message_is_dead_lettered_and_acknowledged(mqtt):
    name = unique("inbox-poison")
    dead, ok = Sink(), []

    def handler(topic, r):
        if r.seq == 1:
            raise OverflowError("date value out of range (test)")
        ok.append(r.seq)

    sub = make(mqtt, name)
    sub.subscribe(topics.reading("s1", "ip"), Reading, handler)
    watch = make(mqtt, unique("watch-poison"))
    watch.subscribe(topics.deadletter(name), DeadLetter, dead)
    pub = make(mqtt, unique("pub-poison"))
    for i in range(3):
        pub.publish(topics.reading("s1", "ip"), reading(i, "ip")).wait_for_publish(5)
    assert wait_for(lambda: ok == [0, 2] and len(dead.items) == 1)
    assert "OverflowError" in dead.items[0].reason
    sub.close()
    # acknowledged: a restart of the same session gets nothing again
    again = Bus(mqtt, name)
    redelivered = Sink()
    again.subscribe(topics.reading("s1", "ip"), Reading, redelivered)
    assert again.connect(10)
    time.sleep(1.0)
    assert redelivered.items == []
    for b in (again, watch, pub):
        b.close()


def test_a_handler_stuck_longer_than_the_keepalive_keeps_the_connection(mqtt):
    """paho's thread only enqueues, so PINGREQ goes out while the handler waits on a lock."""
    quick = mqtt.model_copy(update={"keepalive_s": 5})
    name = unique("inbox-stuck")
    release = threading.Event()
    done: list[int] = []

    def slow(topic, r):
        if r.seq == 0:
            release.wait(14)  # almost three keepalive periods
        done.append(r.seq)

    sub = make(quick, name)
    sub.subscribe(topics.reading("s1", "is"), Reading, slow)
    pub = make(mqtt, unique("pub-stuck"))
    for i in range(3):
        pub.publish(topics.reading("s1", "is"), reading(i, "is"))
    time.sleep(13)
    assert sub.connected and sub.counters.get("mqtt_disconnects") == 0
    release.set()
    assert wait_for(lambda: done == [0, 1, 2])
    assert sub.counters.get("mqtt_connects") == 1
    sub.close(), pub.close()


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_a_payload_for_another_meter_than_its_topic_is_dead_lettered(mqtt):
    """Identity: a reading of meter m2 published on m1's topic (a forged or misrouted one) never
    reaches a handler; it is dead-lettered with the reason, and the stream goes on."""
    name = unique("inbox-identity")
    got, dead = Sink(), Sink()
    sub = make(mqtt, name)
    sub.subscribe(topics.all_meters("reading"), Reading, got)
    watch = make(mqtt, unique("watch-identity"))
    watch.subscribe(topics.deadletter(name), DeadLetter, dead)
    pub = make(mqtt, unique("pub-identity"))
    pub.publish(topics.reading("s1", "m1"), reading(0, "m2"))  # payload says m2, topic says m1
    pub.publish(topics.reading("s1", "m1"), reading(1, "m1"))
    assert wait_for(lambda: len(got.items) == 1 and len(dead.items) == 1)
    assert got.items[0].meter == "m1" and "does not match topic" in dead.items[0].reason
    assert sub.counters.get("rejected") == 1
    for b in (sub, watch, pub):
        b.close()


def test_an_idle_inbox_waits_and_does_not_spin(mqtt):
    """With no tick and no message the worker sleeps: after 3 s idle it used almost no CPU (a worker
    that spun here once made every service burn a core and delayed each message by ~50 ms)."""
    import psutil

    sub = make(mqtt, unique("inbox-idle"))
    worker = sub.inbox._thread
    assert worker is not None
    time.sleep(3.0)
    cpu = next(t for t in psutil.Process().threads() if t.id == worker.native_id)
    assert cpu.user_time + cpu.system_time < 0.3, cpu
    sub.close()
