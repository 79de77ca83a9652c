"""A raw paho QoS 1 publisher (the baseline tool of the pipeline benchmark), run as its own process.

    python -m bench.mqtt_publisher HOST PORT USER PASSWORD SITE N METERS

Publishes N readings (round-robin over METERS meters, one minute apart per meter) as fast as paho's
inflight window allows, waits for every PUBACK, and prints {"t_first": ..., "t_acked": ...} (epoch s).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.detector_common import reading_payload


def main(argv: list[str]) -> int:
    host, port, user, pw, site, n, meters = argv[0], int(argv[1]), argv[2], argv[3], argv[4], int(argv[5]), int(argv[6])
    payloads = [(f"flowwatch/v1/{site}/m{i % meters}/reading", reading_payload(site, f"m{i % meters}", i // meters,
                                                                               flow=50.0 + (i % 7) * 0.1, pressure=4.0 + (i % 5) * 0.01))
                for i in range(n)]
    acked = 0
    done = threading.Event()

    def on_publish(c, u, mid, rc, props):
        nonlocal acked
        acked += 1
        if acked >= n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{site}", clean_session=True)
    c.username_pw_set(user, pw)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect(host, port)
    c.loop_start()
    t_first = time.time()
    for topic, payload in payloads:
        c.publish(topic, payload, qos=1)
    done.wait(600)
    t_acked = time.time()
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"t_first": t_first, "t_acked": t_acked, "acked": acked}))
    return 0 if acked >= n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
