"""Many meters on one box: CPU and memory of the detector and the collector at 1 reading per meter per minute.

    python -m bench.scaling [--quick] [--meters 10,100,1000] [--window S] [--runs N]

For each meter count M, on one Mosquitto (persistence on, QoS 1) and one detector process (SQLite):

1. Detector, M meters: a stand-in publisher (bench/meter_publisher.py: one paho QoS 1 client, one
   topic per meter, real ``Reading`` payloads) sends one reading of every meter (each meter known
   before the window), then every meter one reading a minute, spread over the minute, for the
   window. The detector's CPU (user + system, % of one core) and RSS are measured over the window;
   zero loss: the store holds every reading published, once, and nothing was dead-lettered.
2. Collector, M meters: the real collector process reading M simulated meters (``meters``: M
   entries, simulator source, speed 1: each meter's reading of every minute, all at the minute as
   a box of polled meters gets them; validated, spooled durably, published, removed from the spool
   on the detector's receipt) into the same detector. Its CPU and the detector's are measured over
   one whole minute (from one minute's readings all stored to the next's); one run per count (a
   minute each). Zero loss: every reading spooled is stored, once, and the spool is empty.

CPU figures are from /proc (psutil) over the window; the machine is shared with other work, so
each figure is the median of the runs with its spread. Target (issue 15): 1,000 meters at 1 reading/min,
zero loss, collector and detector each ≤ 25 % of one core. The detector costs more per reading
from the stand-in (readings spread over the minute) than from the collector (a minute's readings
at once); small batches against large ones is the likely reason (not measured).

The forecaster's hourly round for M meters (issue 15: ≤ 60 s for 1,000 meters, RSS ≤ 500 MB) is
measured by bench/forecast_meters.py (its section below). Not here yet: a forecaster fed these M
meters' live readings over MQTT; add it as a third measurement per count, a ``forecaster_run``
beside ``detector_run`` and ``collector_run``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from app.broker import MosquittoProcess
from bench.common import machine, table
from bench.detector_common import ROOT, env, start_detector, stop, write_config

TARGET_CPU = 25.0


def _count(db: Path, site: str) -> tuple[int, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT COUNT(*), COUNT(DISTINCT meter || '/' || ts) FROM readings_v WHERE site = ?", (site,)).fetchone()
    finally:
        con.close()


def _wait_count(db: Path, site: str, n: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        got = _count(db, site)
        if got[0] >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def detector_run(broker: MosquittoProcess, det: psutil.Process, db: Path, health: Path, meters: int, window: float) -> dict:
    site = f"sc{uuid.uuid4().hex[:6]}"
    dead0 = json.loads(health.read_text())["counters"].get("dead_lettered", 0)
    warmup = 5.0 + meters / 200
    pub = subprocess.Popen([sys.executable, "-m", "bench.meter_publisher", broker.host, str(broker.port), broker.username,
                            broker.password, site, str(meters), str(warmup), str(window)], cwd=ROOT, env=env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_count(db, site, meters, 60 + warmup)  # the first reading of every meter stored
    while _count(db, site)[0] == meters and pub.poll() is None:  # the window starts with the next one
        time.sleep(0.05)
    c0, w0 = _cpu(det), time.monotonic()
    out, err = pub.communicate(timeout=window + 180)
    if pub.returncode != 0:
        raise RuntimeError(f"publisher failed: {err[-1500:]}")
    res = json.loads(out.strip().splitlines()[-1])
    total, distinct = _wait_count(db, site, res["published"], 60)
    c1, w1 = _cpu(det), time.monotonic()
    if total != res["published"] or distinct != total:
        raise RuntimeError(f"{meters} meters: stored {total} ({distinct} distinct) of {res['published']} published")
    time.sleep(1.2)  # the heartbeat file is rewritten every second
    dead = json.loads(health.read_text())["counters"].get("dead_lettered", 0) - dead0
    if dead:
        raise RuntimeError(f"{meters} meters: the detector dead-lettered {dead} message(s)")
    return {"cpu": 100 * (c1 - c0) / (w1 - w0), "rss": det.memory_info().rss / 2**20, "published": res["published"], "stored": total}


def collector_run(broker: MosquittoProcess, work: Path, det: psutil.Process, db: Path, meters: int, minutes: int) -> dict:
    """The real collector reading M simulated meters (``meters`` list, simulator source, speed 1: every
    meter's reading of each minute, as a box of polled meters gets them); CPU over whole minutes."""
    site = f"cl{uuid.uuid4().hex[:6]}"
    data = work / site
    cfg = write_config(work, broker, store="sqlite", client_prefix=site, extra={
        "site": site, "data_dir": str(data), "timezone": "UTC",
        "meters": [{"id": f"m{k}", "source": "simulator"} for k in range(meters)],
        "collector": {"source": "simulator", "speed": 1.0},
    })
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "collector", "-c", str(cfg)], cwd=ROOT,
                            stdout=(work / f"{site}.log").open("ab"), stderr=subprocess.STDOUT, env=env())
    try:
        col = psutil.Process(proc.pid)
        first = _wait_count(db, site, meters, 150)[0]  # the first minute of every meter stored: started
        if first < meters:
            raise RuntimeError(f"collector of {meters} meters: {first} readings stored after 150 s: {(work / f'{site}.log').read_text()[-1500:]}")
        # measured from one minute's readings all stored to `minutes` minutes later, all stored
        c0, d0, w0 = _cpu(col), _cpu(det), time.monotonic()
        total, distinct = _wait_count(db, site, first + meters * minutes, 60 * minutes + 90)
        c1, d1, w1 = _cpu(col), _cpu(det), time.monotonic()
        rss = col.memory_info().rss / 2**20
        want = first + meters * minutes
        if total < want or distinct != total:
            raise RuntimeError(f"collector of {meters} meters: stored {total} ({distinct} distinct), expected {want}")
        health = data / "health" / "collector.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # zero loss: every reading spooled was stored (the spool is empty)
            c = json.loads(health.read_text())["counters"]
            total = _count(db, site)[0]
            if c.get("spool_depth") == 0 and c.get("spooled") == total:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"collector of {meters} meters: spooled {c.get('spooled')}, stored {total}, spool depth {c.get('spool_depth')}")
    finally:
        stop(proc)
    return {"cpu": 100 * (c1 - c0) / (w1 - w0), "det_cpu": 100 * (d1 - d0) / (w1 - w0), "rss": rss, "n": int(c["spooled"]), "stored": total}


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    med = statistics.median(values)
    return fmt.format(med) + (f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 and 100 meters, short windows (smoke check)")
    p.add_argument("--meters", default=None, help="comma-separated meter counts (default 10,100,1000)")
    p.add_argument("--window", type=float, default=None, help="seconds measured per count (default 30)")
    p.add_argument("--runs", type=int, default=None)
    args = p.parse_args(argv)
    counts = [int(x) for x in (args.meters or ("10,100" if args.quick else "10,100,1000")).split(",")]
    window = args.window or (10.0 if args.quick else 30.0)
    runs = args.runs or (1 if args.quick else 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fw-bench-scale-") as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(work / "mosquitto").start()
        det = None
        try:
            cfg = write_config(work, broker, store="sqlite", extra={"timezone": "UTC", "limits": {"max_meters_per_site": 1000}})
            det = start_detector(cfg, work)
            dproc = psutil.Process(det.pid)
            db = work / "var" / "flowwatch.db"
            health = work / "var" / "health" / "detector.json"
            for m in counts:
                d_runs = [detector_run(broker, dproc, db, health, m, window) for _ in range(runs)]
                c_runs = [collector_run(broker, work, dproc, db, m, 1)]
                dcpu, ccpu = [r["cpu"] for r in d_runs], [r["cpu"] for r in c_runs]
                ok = statistics.median(dcpu) <= TARGET_CPU and statistics.median(ccpu) <= TARGET_CPU
                rows.append([f"{m:,}", f"{m / 60:.1f}", _spread(dcpu), f"{max(r['rss'] for r in d_runs):.0f}",
                             _spread(ccpu), _spread([r["det_cpu"] for r in c_runs]), f"{max(r['rss'] for r in c_runs):.0f}",
                             f"{sum(r['stored'] for r in d_runs):,} / {sum(r['published'] for r in d_runs):,}; "
                             f"{sum(r['stored'] for r in c_runs):,} / {sum(r['n'] for r in c_runs):,}",
                             ("met" if ok else "NOT met") if m >= 1000 else "-"])
        finally:
            if det is not None:
                stop(det)
            broker.stop()
    print(f"Meters at 1 reading/min each, {window:.0f} s measured per count, {runs} run(s) each (median, min-max); "
          f"Mosquitto QoS 1 with persistence, detector on SQLite. Target (1,000 meters): collector and detector each "
          f"<= {TARGET_CPU:.0f} % of one core, zero loss. Machine: {machine()}, shared with other work.\n")
    print(table(["meters", "readings/s", "detector CPU %, M meters (stand-in publisher)", "detector RSS MB",
                 "collector CPU %, M simulated meters (real process, 1 run)", "detector CPU % meanwhile", "collector RSS MB",
                 "stored / sent (detector; collector)", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
