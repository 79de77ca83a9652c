"""Shared plumbing of the detector benchmarks: a broker, a store, a detector process, a publisher process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from app.broker import MosquittoProcess

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 2, tzinfo=UTC)


def start_influxd(workdir: Path):
    from app.influxd import InfluxProcess

    return InfluxProcess(workdir / "influxd").start()


def write_config(workdir: Path, broker: MosquittoProcess, *, store: str, influx_url: str | None = None,
                 client_prefix: str = "bench", detector: dict | None = None, extra: dict | None = None) -> Path:
    """A config for the bench processes on ``broker``; ``extra`` adds top-level keys (site, collector...)."""
    data = {
        "data_dir": str(workdir / "var"),
        "log_level": "WARNING",
        "mqtt": {"host": broker.host, "port": broker.port, "username": broker.username, "password": broker.password,
                 "client_id_prefix": client_prefix},
        "store": {"backend": store},
        "detector": detector or {},
    }
    if store == "influxdb":
        data["store"]["influxdb"] = {"url": influx_url, "database": "bench"}
    data.update(extra or {})
    f = workdir / f"{client_prefix}.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def start_detector(cfg: Path, workdir: Path, timeout: float = 60.0) -> subprocess.Popen:
    health = workdir / "var" / "health" / "detector.json"
    health.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "detector", "-c", str(cfg)], cwd=ROOT,
                            stdout=(workdir / "detector.log").open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health.exists() and json.loads(health.read_text()).get("state") == "online":
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"detector did not start: {(workdir / 'detector.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reading_payload(site: str, meter: str, i: int, flow: float | None = 50.0, pressure: float = 4.0) -> bytes:
    ts = (T0 + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"schema_version": 1, "site": site, "meter": meter, "ts": ts, "seq": i,
                       "flow_rate": flow, "pressure": pressure, "source": "simulator"}, separators=(",", ":")).encode()


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]
