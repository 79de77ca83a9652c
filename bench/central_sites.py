"""Simulated sites for bench/central.py, run as their own process (their CPU is not the central tier's).

    python -m bench.central_sites SPEC.json

SPEC: {"sites": [{"site", "host", "port", "user", "password", "ca"}...], "rate_per_site", "duration_s", "out"}.
Each site is one MQTT connection with its own user, persistent session (clean_session false) and
QoS 1: what a box's bridge is to the central broker. ``ca`` set: TLS with that CA (a stand-in for a
bridge, straight to the central broker); unset: plain (a real box broker, which bridges on).
Every site publishes ``rate_per_site`` readings per second for ``duration_s``; each reading's
timestamp is its wall-clock publish time (so a receiver can measure latency). While the broker is
away paho keeps the QoS 1 messages and sends them after the reconnect, as a bridge's queue does.
Writes {"produced": {site: n}, "t_end": epoch s} to ``out`` when every message is acknowledged.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared.messages import Reading

ACK_WAIT_S = 600.0


def _payload(site: str, seq: int, now: float) -> str:
    return Reading(site=site, meter="m1", ts=datetime.fromtimestamp(now, UTC), seq=seq, flow_rate=50.0 + seq % 7,
                   pressure=4.0, source="bench").to_json()


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    sites = spec["sites"]
    rate, duration = float(spec["rate_per_site"]), float(spec["duration_s"])
    lock = threading.Lock()
    unacked = 0
    clients = []
    for s in sites:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s["user"], clean_session=False, protocol=mqtt.MQTTv311)
        c.username_pw_set(s["user"], s["password"])
        if s.get("ca"):
            c.tls_set(ca_certs=s["ca"], tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 2)

        def on_publish(cl, u, mid, rc, props):  # noqa: ANN001
            nonlocal unacked
            with lock:
                unacked -= 1

        c.on_publish = on_publish
        c.connect_async(s["host"], s["port"], keepalive=30)
        c.loop_start()
        clients.append(c)
    deadline = time.monotonic() + 300
    while not all(c.is_connected() for c in clients):
        if time.monotonic() > deadline:
            print(f"only {sum(c.is_connected() for c in clients)} of {len(clients)} sites connected", file=sys.stderr)
            return 1
        time.sleep(0.1)
    produced = {s["site"]: 0 for s in sites}
    t0 = time.monotonic()
    step = 1.0 / rate
    k = 0
    while time.monotonic() - t0 < duration:
        for s, c in zip(sites, clients, strict=True):
            seq = produced[s["site"]]
            with lock:
                unacked += 1
            c.publish(f"flowwatch/v1/{s['site']}/m1/reading", _payload(s["site"], seq, time.time()), qos=1)
            produced[s["site"]] = seq + 1
        k += 1
        time.sleep(max(0.0, t0 + k * step - time.monotonic()))
    t_pub = time.time()
    deadline = time.monotonic() + ACK_WAIT_S
    while unacked > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(spec["out"]).write_text(json.dumps({"produced": produced, "t_published": t_pub, "t_acked": time.time(),
                                             "unacked": unacked}))
    for c in clients:
        c.disconnect()
        c.loop_stop()
    return 0 if unacked == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
