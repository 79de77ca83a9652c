"""The stand-in for a collector of many meters (the scaling benchmark), run as its own process.

    python -m bench.meter_publisher HOST PORT USER PASSWORD SITE METERS WARMUP_S WINDOW_S

One paho client, QoS 1, one topic per meter (shared.topics), each payload a real
shared.messages.Reading encoded as the collector encodes it (``Reading.to_json``). First one
reading of every meter (event minute 0) as fast as the inflight window allows, then a pause of
WARMUP_S, then every meter one reading per minute, spread evenly over the minute, for WINDOW_S
seconds. Prints {"published": N, "t_window": epoch s of the first paced reading} when every PUBACK came.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared.messages import Reading
from shared.topics import Topics

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def payload(site: str, k: int, minute: int) -> tuple[str, bytes]:
    meter = f"m{k}"
    r = Reading(site=site, meter=meter, ts=T0 + timedelta(minutes=minute), seq=minute, flow_rate=40.0 + k % 17 + (minute % 7) * 0.1,
                pressure=4.0 - (k % 13) * 0.01, source="simulator")
    return Topics().reading(site, meter), r.to_json()


def main(argv: list[str]) -> int:
    host, port, user, pw, site = argv[0], int(argv[1]), argv[2], argv[3], argv[4]
    meters, warmup_s, window_s = int(argv[5]), float(argv[6]), float(argv[7])
    acked, published = 0, 0
    lock = threading.Lock()

    def on_publish(c, u, mid, rc, props):
        nonlocal acked
        with lock:
            acked += 1

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-meters-{site}", clean_session=True)
    c.username_pw_set(user, pw)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect(host, port)
    c.loop_start()
    for k in range(meters):  # every meter known to the detector before the window
        c.publish(*payload(site, k, 0), qos=1)
        published += 1
    time.sleep(warmup_s)
    step = 60.0 / meters
    t_window = time.time()
    i = 0
    while i * step < window_s:
        due = t_window + i * step
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        c.publish(*payload(site, i % meters, 1 + i // meters), qos=1)
        published += 1
        i += 1
    deadline = time.monotonic() + 120
    while acked < published and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"published": published, "acked": acked, "t_window": t_window}))
    return 0 if acked >= published else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
