"""Run a local Mosquitto: used by ``flowwatch up``, the test fixtures and the benchmarks.

The config is rendered from the project's ``mosquitto/mosquitto.conf`` (the file docker compose
mounts), so every deployment runs the same broker settings: persistence with a short autosave
interval, a queue limit sized for a long outage instead of the default 1000 messages after which a
QoS 1 backlog is silently dropped (the brief, §10), anonymous access off. Only the machine-local
lines (listener, password/ACL files, persistence location, log destination, TLS files) are
replaced; ``overrides`` may change any other key (the tests save every second).
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
from typing import TYPE_CHECKING

from app import credentials
from shared.fileio import atomic_write
from shared.settings import MqttSettings
from shared.topics import Topics

if TYPE_CHECKING:
    from app.tls import TlsFiles
    from shared.settings.broker import BrokerSettings

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[1] / "mosquitto"
PROJECT_CONF = PROJECT_DIR / "mosquitto.conf"
PROJECT_ACL = PROJECT_DIR / "acl"
# Lines of the project config that name things of the container; set per machine here.
LOCAL_KEYS = frozenset({
    "listener", "protocol", "password_file", "acl_file", "persistence_location", "log_dest", "user",
    "cafile", "capath", "certfile", "keyfile", "tls_version", "require_certificate", "include_dir",
})
TEST_OVERRIDES = {"autosave_interval": "1"}


def project_settings(conf: Path = PROJECT_CONF) -> list[tuple[str, str]]:
    """The (key, value) lines of the project config that are not machine-local, in order."""
    if not conf.exists():
        raise RuntimeError(f"{conf} not found: run flowwatch from a checkout of the repository")
    out = []
    for raw in conf.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key not in LOCAL_KEYS:
            out.append((key, value.strip()))
    return out


def project_setting(key: str, conf: Path = PROJECT_CONF) -> str | None:
    return next((v for k, v in project_settings(conf) if k == key), None)


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener: the LAN side of the box's broker (or the central broker's only listener)."""

    host: str
    port: int
    cafile: Path
    certfile: Path
    keyfile: Path

    def lines(self) -> list[str]:
        return [f"listener {self.port} {self.host}", f"cafile {self.cafile}", f"certfile {self.certfile}",
                f"keyfile {self.keyfile}", "tls_version tlsv1.2"]


def box_tls_listener(broker: BrokerSettings, tls_files: TlsFiles, port: int | None = None) -> TlsListener | None:
    """The box's LAN listener on ``broker.tls_bind`` (``port``, default ``broker.tls_port``) with the
    certificate in ``tls_files``; None when ``broker.tls`` is off."""
    if not broker.tls:
        return None
    return TlsListener(broker.tls_bind, broker.tls_port if port is None else port,
                       tls_files.ca_cert, tls_files.server_cert, tls_files.server_key)


def render_config(
    *, host: str, port: int, password_file: Path, data_dir: Path, log_file: Path,
    acl_file: Path | None = None, overrides: dict[str, str] | None = None, conf: Path = PROJECT_CONF,
    tls: TlsListener | None = None,
) -> str:
    """The project's mosquitto.conf with this machine's listener, files and folders.

    ``host``/``port``: the plain listener (loopback for ``flowwatch up``); ``tls``: the listener
    for everything off the box."""
    overrides = dict(overrides or {})
    lines = [f"listener {port} {host}", *(tls.lines() if tls is not None else [])]
    lines.append(f"password_file {password_file}")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    # Started as root, mosquitto drops to user 'mosquitto', which cannot read our files: stay us.
    if os.geteuid() == 0:
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    lines += [f"persistence_location {data_dir}/", f"log_dest file {log_file}"]
    seen = set()
    for key, value in project_settings(conf):
        if key == "use_username_as_clientid" and acl_file is None:
            continue  # a one-user broker (tests, benchmarks): its clients are told apart by client id
        if key in overrides and key not in seen:
            value = overrides[key]
        seen.add(key)
        lines.append(f"{key} {value}".rstrip())
    lines += [f"{k} {v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines) + "\n"


COLLECTOR_READINGS = "topic write flowwatch/v1/+/+/reading"


def render_acl(meters: list[tuple[str, str]], acl: Path = PROJECT_ACL) -> str:
    """The project ACL with the collector allowed to publish readings only for ``meters``
    (``(site, meter)`` pairs of the configuration) instead of any meter: a leaked collector password
    cannot inject readings for meters this box does not have."""
    topics = Topics()
    lines = [f"topic write {topics.reading(site, meter)}" for site, meter in meters]  # validates the ids
    text = acl.read_text()
    if COLLECTOR_READINGS not in text:
        raise RuntimeError(f"{acl}: the collector's line {COLLECTOR_READINGS!r} is missing; cannot narrow it to the configured meters")
    return text.replace(COLLECTOR_READINGS, "\n".join(lines) or "# no meter configured", 1)


def write_acl(path: Path, meters: list[tuple[str, str]]) -> Path:
    """Write :func:`render_acl` to ``path`` (the broker reads it; nothing secret in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_acl(meters).encode(), mode=0o644)
    return path


# What the project config sets (kept for code that reports it, e.g. benchmarks).
MAX_QUEUED_MESSAGES = int(project_setting("max_queued_messages") or 1000)


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
    """Hash users into a Mosquitto password file (the ``mosquitto_passwd`` format, no subprocess)."""
    credentials.write_password_file(path, users)


@dataclass
class MosquittoProcess:
    """A mosquitto started in ``workdir`` with the project config (see :func:`render_config`).

    ``users`` default to one user with a random password and no ACL (the test fixtures); pass
    ``acl_file=PROJECT_ACL`` and the generated users for the real thing (``flowwatch up``).
    ``password_file`` uses an existing password file instead of writing one from ``users``.
    """

    workdir: Path
    port: int = 0
    users: dict[str, str] = field(default_factory=dict)
    acl_file: Path | None = None
    extra_conf: str = ""
    overrides: dict[str, str] = field(default_factory=lambda: dict(TEST_OVERRIDES))
    password_file: Path | None = None
    host: str = "127.0.0.1"
    tls: TlsListener | None = None
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
        if self.password_file is None:
            self.password_file = self.workdir / "passwd"
            write_password_file(self.password_file, self.users)
        # 0600: a bridge section (extra_conf) holds the site's password for the central broker.
        atomic_write(self.conf, (
            render_config(
                host=self.host, port=self.port, password_file=self.password_file, data_dir=self.workdir / "data",
                log_file=self.log, acl_file=self.acl_file, overrides=self.overrides, tls=self.tls,
            )
            + self.extra_conf
        ).encode(), mode=0o600)

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
        if not wait_port(self.host, self.port, timeout) or (self.tls and not wait_port(_probe_host(self.tls.host), self.tls.port, 5)):
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


def _probe_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind


def mqtt_settings(broker: MosquittoProcess) -> MqttSettings:
    """Client settings for ``broker``'s first user, reconnecting quickly (tests and benchmarks)."""
    return MqttSettings(host=broker.host, port=broker.port, username=broker.username, password=broker.password,
                        reconnect_min_s=0.2, reconnect_max_s=1.0, keepalive_s=10)
