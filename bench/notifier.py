"""Notifier: time from an anomaly on the broker to the webhook receiving it, and the notifier's memory.

A real Mosquitto, the notifier as its own process (``python -m app.cli notifier``), a local HTTP
receiver. ``--alerts`` critical anomalies (distinct alerts) are published one at a time, each after
the previous one arrived; the latency of each is measured at the receiver.

    python -m bench.notifier --alerts 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from app.broker import MosquittoProcess, mqtt_settings
from bench.common import machine
from shared.bus import Bus
from shared.messages import Anomaly

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=100)
    args = p.parse_args(argv)
    arrived: dict[str, float] = {}
    cond = threading.Condition()

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with cond:
                arrived[body["alert_id"]] = time.perf_counter()
                cond.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a) -> None:  # noqa: ANN002
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess(Path(tmp) / "mosquitto") as broker:
        work = Path(tmp)
        pw = work / "pw"
        pw.write_text(broker.password)
        mq = mqtt_settings(broker).model_dump(mode="json")
        mq.update(password=None, password_file=str(pw))
        cfg = {"data_dir": str(work / "var"), "mqtt": mq,
               "notifier": {"channels": {"hook": {"type": "webhook", "url": f"http://127.0.0.1:{srv.server_address[1]}/"}},
                            "routes": [{"channels": ["hook"]}]}}
        (work / "c.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "notifier", "-c", str(work / "c.yaml")], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        bus = Bus(mqtt_settings(broker), "bench-pub", persistent=False)
        try:
            assert bus.connect(wait_s=10)
            deadline = time.monotonic() + 60
            while not (work / "var" / "health" / "notifier.json").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # subscribed (the heartbeat is written once connected)
            from shared.messages import alert_id

            t0 = datetime.now(UTC).replace(microsecond=0)
            lat = []
            for i in range(args.alerts):
                start = t0 + timedelta(minutes=i)
                a = Anomaly(site="site1", meter=f"m{i % 10}", kind="burst", signal="both", severity="critical", state="open",
                            start=start, ts=start, value=400.0, threshold=250.0)
                aid = alert_id(a.site, a.meter, a.kind, a.signal, a.start)
                sent = time.perf_counter()
                bus.publish(bus.topics.anomaly(a.site, a.meter), a)
                with cond:
                    if not cond.wait_for(lambda aid=aid: aid in arrived, 30):
                        raise SystemExit(f"alert {i} did not arrive in 30 s")
                lat.append((arrived[aid] - sent) * 1000)
            rss = rss_mb(proc.pid)
        finally:
            bus.close()
            proc.terminate()
            proc.wait(30)
            srv.shutdown()
    lat.sort()
    print(f"machine: {machine()}")
    print(f"notifier: {args.alerts} alerts, anomaly published -> webhook received: median {statistics.median(lat):.1f} ms, "
          f"p95 {lat[int(0.95 * (len(lat) - 1))]:.1f} ms, max {lat[-1]:.1f} ms; notifier RSS {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
