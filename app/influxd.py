"""Run a local ``influxd`` (Debian's ``influxdb`` 1.6.7) in a folder of its own, on free ports.

Used by the test fixtures and the benchmarks, as ``app.broker.MosquittoProcess`` is for Mosquitto.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from app.broker import free_port
from shared.settings import InfluxSettings


@dataclass
class InfluxProcess:
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.rpc_port = free_port()
        self.conf = self.workdir / "influxdb.conf"
        d = self.workdir
        self.conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            '  cache-max-memory-size = "1g"\n'
            "[monitor]\n  store-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n  max-body-size = 0\n'
            "  max-row-limit = 0\n"
            "[logging]\n  level = \"warn\"\n"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, database: str = "flowwatch", **kw: object) -> InfluxSettings:
        return InfluxSettings(url=self.url, database=database, **kw)

    def start(self, timeout: float = 30.0) -> InfluxProcess:
        exe = shutil.which("influxd") or "/usr/bin/influxd"
        self.proc = subprocess.Popen(
            [exe, "-config", str(self.conf)], stdout=subprocess.DEVNULL, stderr=(self.workdir / "influxd.log").open("ab")
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited: {(self.workdir / 'influxd.log').read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/ping", timeout=0.5).status_code == 204:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"influxd did not answer on {self.url} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def have_influxd() -> bool:
    return shutil.which("influxd") is not None or Path("/usr/bin/influxd").exists()
