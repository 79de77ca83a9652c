"""Reading -> anomaly event latency through Mosquitto and a detector process, at 10 readings/s.

Every reading is built to cause one alert event (readings alternate missing / valid flow, with
``clear_after_minutes: 0``, so each one opens or closes an "invalid" alert). Latency = time the
anomaly arrives at a subscriber - time the reading was published (same process, same clock); the
path includes validation, the rules, the store write (the ack point) and the publish.

    python -m bench.latency [--quick] [--store sqlite|influxdb] [--runs N] [--readings N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from app.broker import MosquittoProcess
from bench.common import machine, table
from bench.detector_common import (
    percentile,
    reading_payload,
    start_detector,
    start_influxd,
    stop,
    write_config,
)
from shared.bus import Bus
from shared.messages import Anomaly
from shared.settings import MqttSettings
from shared.topics import Topics

TARGET_P99_MS = 50.0
RATE = 10.0


def one_run(mqtt: MqttSettings, n: int) -> list[float]:
    topics = Topics()
    site = f"lat{uuid.uuid4().hex[:6]}"
    sent: dict[str, float] = {}
    lat: list[float] = []
    done = threading.Event()
    lock = threading.Lock()

    def on_anomaly(topic: str, a: Anomaly) -> None:
        now = time.perf_counter()
        key = a.ts.strftime("%Y-%m-%dT%H:%M:%SZ")
        with lock:
            t = sent.pop(key, None)
            if t is not None:
                lat.append((now - t) * 1000)
                if len(lat) >= n:
                    done.set()

    sub = Bus(mqtt, f"lat-sub-{site}", persistent=False)
    sub.subscribe(topics.anomaly(site, "m1"), Anomaly, on_anomaly)
    pub = Bus(mqtt, f"lat-pub-{site}", persistent=False)
    assert sub.connect(10) and pub.connect(10)
    time.sleep(0.2)  # let the subscription settle
    topic = topics.reading(site, "m1")
    start = time.perf_counter()
    for i in range(n):
        payload = reading_payload(site, "m1", i, flow=None if i % 2 == 0 else 50.0)
        ts = payload.split(b'"ts":"')[1][:20].decode()
        target = start + i / RATE
        while (d := target - time.perf_counter()) > 0:
            time.sleep(d)
        with lock:
            sent[ts] = time.perf_counter()
        pub.publish(topic, payload)
    done.wait(30)
    sub.close(), pub.close()
    if len(lat) < n:
        print(f"warning: {n - len(lat)} of {n} anomaly events did not arrive", file=sys.stderr)
    return lat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one short run (smoke check)")
    p.add_argument("--store", choices=["sqlite", "influxdb"], default="sqlite")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--readings", type=int, default=None, help="readings per run (at 10/s)")
    args = p.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    n = args.readings or (50 if args.quick else 600)
    with tempfile.TemporaryDirectory(prefix="fw-bench-lat-") as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(work / "mosquitto").start()
        influx = start_influxd(work) if args.store == "influxdb" else None
        det = None
        try:
            cfg = write_config(work, broker, store=args.store, influx_url=influx.url if influx else None,
                               detector={"clear_after_minutes": 0})
            det = start_detector(cfg, work)
            mqtt = MqttSettings(host=broker.host, port=broker.port, username=broker.username, password=broker.password)
            results = [one_run(mqtt, n) for _ in range(runs)]
        finally:
            if det is not None:
                stop(det)
            if influx is not None:
                influx.stop()
            broker.stop()
    p50s = [statistics.median(r) for r in results if r]
    p99s = [percentile(r, 99) for r in results if r]
    rows = [["p50 latency (ms)", f"{statistics.median(p50s):.2f}", " / ".join(f"{x:.2f}" for x in p50s), "-"],
            ["p99 latency (ms)", f"{statistics.median(p99s):.2f}", " / ".join(f"{x:.2f}" for x in p99s), f"<= {TARGET_P99_MS:g}"],
            ["events received / sent", f"{sum(map(len, results))} / {n * runs}", "", "every reading causes one event"]]
    print(f"Reading -> anomaly event latency through Mosquitto (QoS 1, persistence on) and a detector process, store {args.store}; "
          f"{RATE:g} readings/s, {n} readings x {runs} run(s). Brief anchor (§12): p99 <= {TARGET_P99_MS:g} ms at 10 readings/s. "
          f"Machine: {machine()}.\n")
    print(table(["metric", "median of runs", "per run", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
