"""Run a local Mosquitto: used by ``flowwatch up``, the test fixtures and the benchmarks.

The generated config turns on what a default Mosquitto leaves off (the brief, §10): persistence
with a short autosave interval, and a queue limit sized for a long outage instead of the default
1000 messages after which a QoS 1 backlog is silently dropped. Anonymous access is off.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

# A minute-interval meter offline for 30 days queues ~43,200 readings; leave ample room.
MAX_QUEUED_MESSAGES = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """Hash users into a Mosquitto password file with ``mosquitto_passwd``."""
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        raise RuntimeError("mosquitto_passwd not found; install the 'mosquitto' package")
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for user, pw in users.items():
        subprocess.run([exe, "-b", str(path), user, pw], check=True, capture_output=True)


@dataclass
class MosquittoProcess:
    """A mosquitto started with a generated config in ``workdir``."""

    workdir: Path
    port: int = 0
    users: dict[str, str] = field(default_factory=dict)
    acl_file: Path | None = None
    extra_conf: str = ""
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if not self.users:
            self.users = {"flowwatch": secrets.token_urlsafe(16)}
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        (self.workdir / "data").mkdir(exist_ok=True)
        write_password_file(self.workdir / "passwd", self.users)
        acl = f"acl_file {self.acl_file}\n" if self.acl_file else ""
        # Started as root, mosquitto drops to user 'mosquitto', which cannot read our files: stay us.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous false\n"
            f"password_file {self.workdir / 'passwd'}\n"
            f"{acl}{user}"
            "persistence true\n"
            f"persistence_location {self.workdir / 'data'}/\n"
            "autosave_interval 1\n"
            f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 100\n"
            "persistent_client_expiration 30d\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_conf}"
        )

    @property
    def username(self) -> str:
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.username]

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto not found; install it (apt-get install mosquitto)")
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_port(self.host, self.port, timeout):
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {err or self.log.read_text()[-2000:]}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
