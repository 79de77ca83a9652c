"""Central tier: N sites into one central broker (TLS) and the recorder's store.

    python -m bench.central [--quick] [--sites 10,100,1000] [--seconds 20]

Real parts: the central Mosquitto (project config, generated CA, site users, ACL; TLS on loopback),
the recorder as its own process writing SQLite. Sites come two ways: *bridged*, real box brokers
each with its generated bridge section, fed by a publisher as their collector; *stand-in*, one MQTT
connection per site straight to the central broker with the site's user, TLS, QoS 1 and a
persistent session, which is what a bridge is on the wire (bench/central_sites.py, its own process,
so its CPU is not counted). Each site sends 1 reading/s (a box of 60 meters at 1/min).
Latency: publish on the site → delivery by the central broker to a subscriber (each reading carries
its publish time); "to store" is from the last publish until the store holds every reading.
CPU is % of one core over the run, RSS the peak, of the central broker and the recorder only.
"restart": the central broker is stopped (SIGTERM) mid-run for 5 s and started again.
The machine is shared with other work: figures vary run to run; the loss count must not.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from app.broker import PROJECT_ACL, MosquittoProcess
from app.central import CentralFiles, central_broker, render_bridge
from app.credentials import ensure_secrets
from bench.common import machine, table
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RATE_PER_SITE = 1.0
OUTAGE_S = 5.0
SITES_PER_PROCESS = 200
DRAIN_S = 600.0  # after the last publish, how long the store may take to hold everything


class Sampler(threading.Thread):
    """CPU time and peak RSS of some processes, sampled every second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.procs: dict[str, psutil.Process] = {}
        self.cpu0: dict[str, float] = {}
        self.cpu_done: dict[str, float] = {}
        self.rss: dict[str, int] = {}
        self.stop_ev = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        p = psutil.Process(pid)
        if name in self.procs:  # a restarted process: keep what the old one used
            self.cpu_done[name] = self.cpu_done.get(name, 0.0) + self._cpu(name)
        self.procs[name] = p
        self.cpu0[name] = sum(p.cpu_times()[:2])

    def _cpu(self, name: str) -> float:
        try:
            return sum(self.procs[name].cpu_times()[:2]) - self.cpu0[name]
        except psutil.Error:
            return self._last.get(name, 0.0)

    _last: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop_ev.wait(1.0):
            for name, p in list(self.procs.items()):
                try:
                    self.rss[name] = max(self.rss.get(name, 0), p.memory_info().rss)
                    self._last[name] = self._cpu(name)
                except psutil.Error:
                    pass

    def cpu(self, name: str) -> float:
        return self.cpu_done.get(name, 0.0) + self._cpu(name)


class Latency:
    """Subscribes on the central broker (operator user) and records publish → delivery times."""

    def __init__(self, broker: MosquittoProcess, password: str) -> None:
        self.values: list[float] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv311)
        self.c.username_pw_set("operator", password)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("flowwatch/v1/+/+/reading", qos=0)
        self.c.on_message = self._on
        self.c.connect_async(broker.host, broker.port)
        self.c.loop_start()

    def _on(self, c, u, m) -> None:  # noqa: ANN001
        now = time.time()
        try:
            ts = json.loads(m.payload)["ts"]
            self.values.append(now - datetime.fromisoformat(ts).timestamp())
        except (ValueError, KeyError):
            pass

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    except sqlite3.Error:
        return 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def scenario(work: Path, *, mode: str, n_sites: int, seconds: float, restart: bool) -> list[object]:
    sites = [f"s{i:04d}" for i in range(n_sites)]
    central = central_broker(work / "central", sites, overrides={})  # the production autosave (10 s)
    files = CentralFiles(work / "central")
    central.start()
    boxes: list[MosquittoProcess] = []
    sampler = Sampler()
    sampler.start()
    sampler.watch("broker", central.proc.pid)
    db = work / "central.db"
    pw = work / "recorder.password"
    pw.write_text(files.secrets.mqtt_password("recorder"))
    cfg = work / "recorder.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(work / "rec"), "log_level": "WARNING",
        "mqtt": {"host": central.host, "port": central.port, "username": "recorder", "password_file": str(pw),
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "store": {"sqlite": {"path": str(db)}},
    }))
    rec_log = (work / "recorder.log").open("ab")
    recorder = subprocess.Popen([sys.executable, "-m", "app.cli", "recorder", "-c", str(cfg)], cwd=ROOT,
                                stdout=rec_log, stderr=subprocess.STDOUT)
    sampler.watch("recorder", recorder.pid)
    lat = Latency(central, files.secrets.mqtt_password("operator"))
    try:
        spec_sites = []
        for s in sites:
            if mode == "bridged":
                sec = ensure_secrets(work / s / "secrets")
                bs = Settings(site=s, central={"enabled": True, "host": "127.0.0.1", "port": central.tls.port,
                                               "ca_file": str(files.tls.ca_cert), "password_file": str(files.site_password_file(s))})
                box = MosquittoProcess(work / s / "mosquitto", users=sec.users(), password_file=sec.mosquitto_passwd,
                                       acl_file=PROJECT_ACL, extra_conf=render_bridge(bs, restart_s=(1, 2)), overrides={}).start()
                boxes.append(box)
                spec_sites.append({"site": s, "host": box.host, "port": box.port, "user": "collector",
                                   "password": sec.mqtt_password("collector")})
            else:
                spec_sites.append({"site": s, "host": "127.0.0.1", "port": central.tls.port, "user": s,
                                   "password": files.site_password(s), "ca": str(files.tls.ca_cert)})
        # paho waits with select(), which takes file descriptors below 1024 only (~3 per connection):
        # SITES_PER_PROCESS sites per publishing process
        fleets, outs = [], []
        time.sleep(2.0)  # the recorder and the bridges connect
        t_start = time.time()
        for k in range(0, len(spec_sites), SITES_PER_PROCESS):
            out, spec = work / f"sites-{k}.json", work / f"spec-{k}.json"
            spec.write_text(json.dumps({"sites": spec_sites[k:k + SITES_PER_PROCESS], "rate_per_site": RATE_PER_SITE,
                                        "duration_s": seconds, "out": str(out)}))
            fleets.append(subprocess.Popen([sys.executable, "-m", "bench.central_sites", str(spec)], cwd=ROOT))
            outs.append(out)
        if restart:
            time.sleep(seconds / 2)
            central.stop()
            time.sleep(OUTAGE_S)
            central.start()
            sampler.watch("broker", central.proc.pid)
        for fleet in fleets:
            rc = fleet.wait(seconds + 900)
            if rc != 0:
                raise RuntimeError(f"the simulated sites failed (exit {rc})")
        results = [json.loads(o.read_text()) for o in outs]
        res = {"t_published": max(r["t_published"] for r in results)}
        produced = sum(sum(r["produced"].values()) for r in results)
        deadline = time.monotonic() + DRAIN_S
        while stored(db) < produced and time.monotonic() < deadline and recorder.poll() is None:
            time.sleep(0.2)
        t_stored = time.time()
        n_stored = stored(db)
        wall = t_stored - t_start
        row = [f"{mode}{' + restart' if restart else ''}", n_sites, f"{produced / seconds:.0f}",
               f"{n_stored} / {produced}", f"{produced - n_stored}",
               f"{n_stored / (t_stored - t_start):.0f}",
               f"{1000 * pct(lat.values, 50):.0f} / {1000 * pct(lat.values, 95):.0f}" if not restart else "-",
               f"{t_stored - res['t_published']:.1f}",
               f"{100 * sampler.cpu('broker') / wall:.1f} / {sampler.rss.get('broker', 0) / 2**20:.0f}",
               f"{100 * sampler.cpu('recorder') / wall:.1f} / {sampler.rss.get('recorder', 0) / 2**20:.0f}"]
        return row
    finally:
        lat.close()
        sampler.stop_ev.set()
        recorder.terminate()
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
        for b in boxes:
            b.stop()
        central.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.central", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs, 10 sites (smoke check)")
    p.add_argument("--sites", default="10,100,1000", help="stand-in fleet sizes")
    p.add_argument("--seconds", type=float, default=20.0, help="publishing time per run")
    args = p.parse_args(argv)
    seconds = 8.0 if args.quick else args.seconds
    sizes = [10] if args.quick else [int(x) for x in args.sites.split(",")]
    plan = [("bridged", 2, False), ("bridged", 2, True)] + [("stand-in", n, False) for n in sizes] + [("stand-in", max(sizes[:2]), True)]
    rows = []
    for mode, n, restart in plan:
        with tempfile.TemporaryDirectory(prefix="fw-bench-central-") as tmp:
            rows.append(scenario(Path(tmp), mode=mode, n_sites=n, seconds=seconds, restart=restart))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(f"Sites at {RATE_PER_SITE:g} reading/s each for {seconds:g} s into one central Mosquitto (TLS, QoS 1, persistence on) "
          f"and the recorder (SQLite). Machine: {machine()}, shared with other work while measured "
          f"(load average {os.getloadavg()[0]:.1f} at the end).\n")
    print(table(["sites", "n", "offered readings/s", "stored / produced", f"missing {DRAIN_S:.0f} s after the end", "stored/s over the run",
                 "latency to central p50 / p95 (ms)", "last publish → all stored (s)", "broker CPU % / RSS MB",
                 "recorder CPU % / RSS MB"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
