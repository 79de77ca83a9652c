"""A flowwatch stack of real processes for the fault suite and benchmarks.

Each service runs as its own process exactly as in production (``python -m app.cli NAME -c
FILE``), against a real Mosquitto and a real store, so a test can SIGKILL any part and restart it.
The collector replays a generated CSV (fixed timestamps and values) at a chosen speed, so the test
knows every reading that must end up in the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

from app.broker import MosquittoProcess

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
# python -c: shift time.time() (datetime.now() is left alone), then run ``python -m app.cli ...``
CLOCK_SHIFT = ("import runpy, sys, time; _t = time.time; time.time = lambda: _t() + {offset!r}; "
               "sys.argv = sys.argv[1:]; runpy.run_module('app.cli', run_name='__main__', alter_sys=True)")


def write_readings_csv(path: Path, n: int, start: datetime = START) -> list[datetime]:
    """n minute readings with a diurnal shape; returns their timestamps."""
    minutes = np.arange(n)
    flow = 100 + 30 * np.sin(2 * np.pi * minutes / 1440)
    pres = 4.5 - 0.0001 * flow**2
    times = [start + timedelta(minutes=int(i)) for i in minutes]
    with path.open("w") as f:
        f.write("timestamp,flow_rate,pressure\n")
        for t, q, p in zip(times, flow, pres, strict=True):
            f.write(f"{t:%Y-%m-%dT%H:%M:%SZ},{q:.3f},{p:.4f}\n")
    return times


class Stack:
    def __init__(self, work: Path, broker: MosquittoProcess, *, n_readings: int, rate_per_s: float,
                 store: dict | None = None, extra: dict | None = None) -> None:
        self.work = work
        self.broker = broker
        self.data = work / "var"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.csv = work / "readings.csv"
        self.times = write_readings_csv(self.csv, n_readings)
        pw = work / "mqtt-password"
        pw.write_text(broker.password)
        pw.chmod(0o600)
        cfg = {
            "data_dir": str(self.data),
            "log_level": "INFO",
            "mqtt": {"host": broker.host, "port": broker.port, "username": broker.username, "password_file": str(pw),
                     "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "keepalive_s": 10},
            # event time runs rate_per_s readings per wall second
            "collector": {"source": "replay", "interval_s": 60, "speed": 60 * rate_per_s, "replay": {"file": str(self.csv)}},
        }
        if store:
            cfg["store"] = store
        for k, v in (extra or {}).items():
            cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
        self.config = work / "flowwatch.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.procs: dict[str, subprocess.Popen] = {}

    def config_for(self, name: str) -> Path:
        """The shared config, or, on a broker with a user per service (the generated users and the
        ACL, as `flowwatch up` runs it), a copy that logs in as the service's own user."""
        if name not in self.broker.users or self.broker.username == name:
            return self.config
        cfg = yaml.safe_load(self.config.read_text())
        pw = self.work / f"mqtt-password-{name}"
        pw.write_text(self.broker.users[name])
        pw.chmod(0o600)
        cfg["mqtt"].update(username=name, password_file=str(pw))
        path = self.work / f"flowwatch-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, name: str, clock_offset_s: float = 0.0) -> subprocess.Popen:
        """Start a service. ``clock_offset_s`` shifts the process's ``time.time()`` (what a live
        meter's readings are stamped with) by that many seconds, so a test can put a live stream
        just before an hour boundary in event time; only a past offset is plausible to the others."""
        log = (self.logs / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("FLOWWATCH_CONFIG", None)
        cmd = [sys.executable, "-m", "app.cli", name, "-c", str(self.config_for(name))]
        if clock_offset_s:
            cmd[1:3] = ["-c", CLOCK_SHIFT.format(offset=float(clock_offset_s)), "app.cli"]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs[name] = p
        return p

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def stop(self, name: str, timeout: float = 20) -> int:
        p = self.procs.pop(name)
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(self.logs.glob("*.log")))
