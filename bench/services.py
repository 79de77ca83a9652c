"""Memory (RSS) of each service at steady state, and cold start to all services ready.

    python -m bench.services [--quick] [--runs N]

Starts a Mosquitto (the project config) and the five services as separate processes exactly as
`flowwatch up` does (`python -m app.cli <service> -c FILE`), the collector on the simulator at
60× speed (one reading per wall second; a forecast every minute of wall time). Cold start: from
spawning the processes to every service's heartbeat saying "online" (the same file
`flowwatch health` reads), median of N runs. Memory: RSS (and USS, the memory unique to the
process) of each service after it has handled readings for a while, median of samples.
Targets (brief §12): forecaster ≤ 150 MB; collector, detector, exporter ≤ 80 MB; all services
ready ≤ 5 s (trainer aside).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from app.broker import MosquittoProcess
from bench.common import machine, table

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ["collector", "detector", "forecaster", "exporter", "trainer"]
RSS_TARGET = {"collector": 80, "detector": 80, "exporter": 80, "forecaster": 150, "trainer": None}


def write_config(work: Path, broker: MosquittoProcess, speed: float) -> Path:
    pw = work / "mqtt-password"
    pw.write_text(broker.password)
    cfg = {
        "data_dir": str(work / "var"),
        "mqtt": {"host": broker.host, "port": broker.port, "username": broker.username, "password_file": str(pw)},
        "collector": {"source": "simulator", "speed": speed},
    }
    path = work / "flowwatch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def online(work: Path, name: str) -> bool:
    try:
        return json.loads((work / "var" / "health" / f"{name}.json").read_text()).get("state") == "online"
    except (OSError, ValueError):
        return False


def start_all(cfg: Path) -> dict[str, subprocess.Popen]:
    return {
        n: subprocess.Popen([sys.executable, "-m", "app.cli", n, "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in SERVICES
    }


def stop_all(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def one_run(run: int, steady_s: float) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]]]:
    work = Path(tempfile.mkdtemp(prefix=f"fw-bench-svc{run}-"))
    broker = MosquittoProcess(work / "mosquitto").start()
    cfg = write_config(work, broker, speed=60)
    ready: dict[str, float] = {}
    mem: dict[str, list[tuple[float, float]]] = {n: [] for n in SERVICES}
    t0 = time.perf_counter()
    procs = start_all(cfg)
    try:
        deadline = time.monotonic() + 60
        while len(ready) < len(SERVICES) and time.monotonic() < deadline:
            for n in SERVICES:
                if n not in ready and online(work, n):
                    ready[n] = time.perf_counter() - t0
            time.sleep(0.01)
        end = time.monotonic() + steady_s
        while time.monotonic() < end:
            time.sleep(1.0)
            if time.monotonic() < end - steady_s / 2:
                continue  # let windows fill before sampling
            for n, p in procs.items():
                try:
                    info = psutil.Process(p.pid).memory_full_info()
                    mem[n].append((info.rss / 2**20, info.uss / 2**20))
                except psutil.Error:
                    pass
    finally:
        stop_all(procs)
        broker.stop()
    return ready, mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    steady = 10.0 if args.quick else 40.0
    readies, mems = [], {n: [] for n in SERVICES}
    for i in range(runs):
        ready, mem = one_run(i, steady)
        readies.append(ready)
        for n in SERVICES:
            mems[n].extend(mem[n])
    rows = []
    for n in SERVICES:
        starts = [r[n] for r in readies if n in r]
        rss = statistics.median(m[0] for m in mems[n]) if mems[n] else float("nan")
        uss = statistics.median(m[1] for m in mems[n]) if mems[n] else float("nan")
        target = RSS_TARGET[n]
        status = "—" if target is None else ("met" if rss <= target else "NOT met")
        rows.append((n, f"{statistics.median(starts):.2f} s" if starts else "never ready", f"{rss:.0f} MB", f"{uss:.0f} MB",
                     f"≤ {target} MB" if target else "(none)", status))
    all_ready = [max(r[n] for n in SERVICES if n != "trainer") for r in readies if all(n in r for n in SERVICES if n != "trainer")]
    print(f"{runs} run(s); {machine()}")
    print(table(["service", "ready after", "RSS (median)", "USS (median)", "RSS target", "status"], rows))
    if all_ready:
        cold = statistics.median(all_ready)
        print(f"\ncold start to all services ready (trainer aside): median {cold:.2f} s over {len(all_ready)} run(s); target ≤ 5 s: {'met' if cold <= 5 else 'NOT met'}")
    else:
        print("\ncold start: some service never became ready")


if __name__ == "__main__":
    main()
