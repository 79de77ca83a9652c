"""``flowwatch up``: the whole stack on this machine, no Docker.

- Mosquitto from the system, started with the project's ``mosquitto/mosquitto.conf`` and ``acl``
  (rendered by ``app.broker``) and the secrets generated on first start in ``data_dir/secrets``;
- the store the config chooses (SQLite under ``data_dir`` unless InfluxDB is configured);
- the meter source the config chooses (the simulator unless ``collector.source`` names a meter);
- the five services as child processes (``python -m app.cli NAME -c data_dir/up/NAME.yaml``),
  each restarted with backoff if it dies, logging to ``data_dir/logs/NAME.log``: their output is
  read through a pipe and written with size-based rotation (``--log-max-mb``, ``--log-files``:
  NAME.log, NAME.log.1 ... at most that many files); the broker's log is rotated the same way
  (renamed, then SIGHUP: mosquitto reopens it);
- a live status view from the heartbeat files (state, counters, last event time per service);
- Ctrl-C / SIGTERM stops the services (SIGTERM: each flushes and publishes "offline"), then the broker.

``--speed N`` runs simulated event time N× faster (``collector.speed``): at 600, a minute of wall
time is ten hours of readings — bursts, hourly forecasts and 10-minute server files within a minute.

No embedded Python broker: the services rely on what Mosquitto does and the brief configures on
purpose (persistent sessions with bounded queues, persistence, password file + ACL). amqtt, the
one maintained pure-Python broker, has neither the same ACL / password-file formats nor the queue
bounds, so a stack on it would be a different, untested product; ``./flowwatch up`` installs the
distribution's mosquitto instead.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import logging.handlers
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from app.credentials import SERVICES, ensure_secrets
from shared.runner import base_parser, settings_from_args
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BACKOFF_MIN_S, BACKOFF_MAX_S, HEALTHY_RUN_S = 1.0, 30.0, 60.0
STOP_TIMEOUT_S = 20.0
LOG_MAX_MB, LOG_FILES = 10.0, 5  # per log: NAME.log plus 4 older ones, 10 MB each


@dataclass(frozen=True)
class LogLimits:
    """Size-based rotation of each log under ``data_dir/logs``: ``files`` files (>= 2) of ``max_bytes`` at most."""

    max_bytes: int = int(LOG_MAX_MB * 1024 * 1024)
    files: int = LOG_FILES

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.files < 2:  # with one file RotatingFileHandler would never truncate it
            raise ValueError("log rotation needs max_bytes > 0 and at least 2 files")

    def handler(self, path: Path) -> logging.handlers.RotatingFileHandler:
        path.parent.mkdir(parents=True, exist_ok=True)
        h = logging.handlers.RotatingFileHandler(path, maxBytes=self.max_bytes, backupCount=self.files - 1,
                                                 encoding="utf-8", errors="replace")
        h.setFormatter(logging.Formatter("%(message)s"))  # the lines as the service wrote them
        return h


def pump(stream, handler: logging.Handler) -> None:
    """Copy a child's output, line by line, into its rotating log until the child closes it."""
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            handler.handle(logging.makeLogRecord({"msg": line, "args": None, "levelno": logging.INFO}))


def rotate_file(path: Path, files: int) -> None:
    """path -> path.1 -> ... -> path.(files-1), the oldest dropped (RotatingFileHandler's naming)."""
    for i in range(files - 1, 0, -1):
        src = path if i == 1 else path.with_name(f"{path.name}.{i - 1}")
        if src.exists():
            os.replace(src, path.with_name(f"{path.name}.{i}"))


def _plain(value: Any) -> Any:
    """Settings as plain YAML data, secrets in clear (the file is written 0600 under data_dir)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def service_config(settings: Settings, name: str, *, password_file: Path, host: str, port: int, speed: float | None) -> dict:
    data = _plain(settings.model_dump(mode="python"))
    data["data_dir"] = str(settings.data_dir.resolve())
    data["mqtt"].update(host=host, port=port, username=name, password=None, password_file=str(password_file.resolve()))
    if speed is not None:
        data["collector"]["speed"] = speed
    return data


def available(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"services.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


def box_tls_listener(settings: Settings, secrets):  # noqa: ANN001, ANN201 - app.credentials.Secrets -> app.broker.TlsListener
    """The LAN listener (TLS, generated CA and certificate) unless ``broker.tls`` is off."""
    from app import broker
    from app.tls import ensure_tls

    b = settings.broker
    if not b.tls:
        return None
    t = ensure_tls(secrets.tls_folder, b.cert_names)
    port = b.tls_port if port_free(b.tls_bind, b.tls_port) else broker.free_port()  # as for the plain port; printed at start
    return broker.box_tls_listener(b, t, port)


def box_bridge(settings: Settings) -> str:
    """The bridge section to the central broker when ``central.enabled`` (app/central.py)."""
    if not settings.central.enabled:
        return ""
    from app.central import render_bridge

    return render_bridge(settings)


def mosquitto_exe() -> str | None:
    exe = shutil.which("mosquitto")
    if exe:
        return exe
    return "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_MIN_S
    next_start: float = 0.0
    last_exit: int | None = None
    notes: list[str] = field(default_factory=list)
    limits: LogLimits = field(default_factory=LogLimits)
    handler: logging.Handler | None = None
    pumps: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        if self.handler is None:
            self.handler = self.limits.handler(self.log)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                     start_new_session=True)  # Ctrl-C reaches us only; we stop them in order
        t = threading.Thread(target=pump, args=(self.proc.stdout, self.handler), name=f"log-{self.name}", daemon=True)
        t.start()
        self.pumps = [p for p in self.pumps if p.is_alive()] + [t]
        self.started = time.monotonic()

    def close_log(self, timeout: float = 5.0) -> None:
        """After the process ended: the rest of its output written, the file closed."""
        for t in self.pumps:
            t.join(timeout)
        if self.handler is not None:
            self.handler.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Stack:
    def __init__(self, settings: Settings, speed: float | None, out=sys.stdout, log_limits: LogLimits | None = None) -> None:
        self.settings = settings
        self.speed = speed
        self.log_limits = log_limits or LogLimits()
        self.out = out
        self.stop_event = threading.Event()
        self.children: list[Child] = []
        self.broker = None
        self.broker_restarts = 0
        self._broker_next_start = 0.0
        self._broker_backoff = BACKOFF_MIN_S

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        secrets = ensure_secrets(s.data_dir / "secrets")
        host, port = self._start_broker(secrets)
        up_dir = s.data_dir / "up"
        up_dir.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWWATCH_")}  # the config file says it all
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"  # a line reaches its log when written, not when a buffer fills
        for name in SERVICES:
            if name == "notifier" and not s.notifier.enabled:
                continue
            if not available(name):
                self.say(f"  {name}: not in this build (services/{name}/__main__.py missing), skipped")
                continue
            cfg = up_dir / f"{name}.yaml"
            data = service_config(s, name, password_file=secrets.mqtt_password_file(name), host=host, port=port, speed=self.speed)
            cfg.write_text(yaml.safe_dump(data, sort_keys=False))
            cfg.chmod(0o600)
            child = Child(name, [sys.executable, "-m", "app.cli", name, "-c", str(cfg.resolve())],
                          s.data_dir / "logs" / f"{name}.log", env, limits=self.log_limits)
            child.start()
            self.children.append(child)
        store = f"InfluxDB {s.store.influxdb.url} ({s.store.influxdb.database})" if s.store.backend == "influxdb" \
            else f"SQLite {s.path(s.store.sqlite.path).resolve()}"
        ids = s.meter_ids
        meters = f"meter {ids[0]}" if len(ids) == 1 else f"{len(ids)} meters ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
        sources = sorted({s.meter_source(m).kind for m in ids})
        self.say(f"flowwatch up: site {s.site}, {meters}, source {', '.join(sources)}"
                 f"{f', speed {self.speed:g}x' if self.speed else ''}")
        self.say(f"  broker   mqtt://{host}:{port} (users and passwords in {secrets.folder.resolve()})")
        if (tls := self.broker.tls) is not None:
            self.say(f"  LAN      mqtts://{tls.host}:{tls.port} (TLS; clients trust {tls.cafile.resolve()})")
        if s.central.enabled:
            self.say(f"  central  bridge to {s.central.host}:{s.central.port} as {s.central.username or s.site}")
        self.say(f"  store    {store}")
        self.say(f"  exports  {s.path(s.exporter.out_dir).resolve()}")
        self.say(f"  logs     {(s.data_dir / 'logs').resolve()}")

    def _start_broker(self, secrets) -> tuple[str, int]:
        from app.broker import MosquittoProcess, free_port, write_acl

        if mosquitto_exe() is None:
            raise SystemExit("flowwatch up: mosquitto is not installed. Install it (apt-get install mosquitto; "
                             "./flowwatch up does this on Debian/Ubuntu) and run again.")
        s = self.settings
        # Plain MQTT on loopback only while the TLS listener serves the LAN (broker.tls, the default).
        plain_hosts = ("127.0.0.1", "localhost") if s.broker.tls else ("127.0.0.1", "localhost", "0.0.0.0")
        host = s.mqtt.host if s.mqtt.host in plain_hosts else "127.0.0.1"
        port = s.mqtt.port
        if not port_free(host, port):
            port = free_port()
        acl = write_acl(secrets.acl_file, [(s.site, m) for m in s.meter_ids])
        self.broker = MosquittoProcess(s.data_dir / "mosquitto", port=port, host=host, users=secrets.users(),
                                       password_file=secrets.mosquitto_passwd, acl_file=acl, overrides={},
                                       tls=box_tls_listener(s, secrets), extra_conf=box_bridge(s))
        self.broker.start()
        return host, port

    # --- supervise ------------------------------------------------------------------------------
    def broker_alive(self) -> bool:
        return self.broker is not None and self.broker.proc is not None and self.broker.proc.poll() is None

    def _supervise_broker(self, now: float) -> None:
        """The broker is supervised like the services: restarted with backoff on the same port and
        data folder (its persistence file keeps the queued sessions; the collector's spool keeps
        whatever the broker had not yet saved)."""
        b = self.broker
        if b is None or self.broker_alive():
            return
        if b.proc is not None:  # just died
            self.say(f"  broker exited with code {b.proc.returncode}; restarting in {self._broker_backoff:.0f}s "
                     f"(log: {b.log}); the services reconnect and resend what it lost")
            b.proc = None
            self._broker_next_start = now + self._broker_backoff
            return
        if now < self._broker_next_start:
            return
        try:
            b.start(timeout=5.0)
        except RuntimeError as exc:
            self._broker_backoff = min(self._broker_backoff * 2, BACKOFF_MAX_S)
            self._broker_next_start = now + self._broker_backoff
            self.say(f"  broker did not start: {exc}; next try in {self._broker_backoff:.0f}s")
            return
        self.broker_restarts += 1
        self._broker_backoff = BACKOFF_MIN_S
        self.say(f"  broker restarted on port {b.port}")

    def _rotate_broker_log(self) -> None:
        """Mosquitto writes its own log file: rename it and send SIGHUP, on which it reopens the file."""
        b = self.broker
        try:
            if not self.broker_alive() or b.log.stat().st_size < self.log_limits.max_bytes:
                return
        except OSError:
            return
        rotate_file(b.log, self.log_limits.files)
        b.proc.send_signal(signal.SIGHUP)

    def supervise_once(self) -> None:
        now = time.monotonic()
        self._supervise_broker(now)
        self._rotate_broker_log()
        for c in self.children:
            if c.alive():
                continue
            if c.proc is not None:  # just died
                c.last_exit = c.proc.returncode
                ran = now - c.started
                c.backoff = BACKOFF_MIN_S if ran > HEALTHY_RUN_S else min(c.backoff * 2, BACKOFF_MAX_S)
                c.next_start = now + c.backoff
                c.proc = None
                self.say(f"  {c.name} exited with code {c.last_exit} after {ran:.0f}s; restarting in {c.backoff:.0f}s "
                         f"(log: {c.log})")
            elif now >= c.next_start:
                c.restarts += 1
                c.start()

    def status_rows(self) -> list[str]:
        from shared.service import health_file

        rows = [f"  {'broker':<11}{'online' if self.broker_alive() else 'down':<9}restarts={self.broker_restarts}"]
        for c in self.children:
            try:
                st = json.loads(health_file(self.settings, c.name).read_text())
            except (OSError, ValueError):
                st = {}
            state = st.get("state", "starting") if c.alive() else "down"
            counters = st.get("counters") or {}
            top = ", ".join(f"{k}={v:g}" for k, v in sorted(counters.items())[:6])
            last = st.get("last_event")
            last = datetime.fromisoformat(last).astimezone(self.settings.tz).strftime("%Y-%m-%d %H:%M") if last else "-"
            rows.append(f"  {c.name:<11}{state:<9}restarts={c.restarts:<3} last event {last:<17} {top}")
        return rows

    def run(self, duration: float | None) -> None:
        deadline = time.monotonic() + duration if duration else None
        tty = self.out.isatty()
        next_view = 0.0
        while not self.stop_event.wait(0.5):
            self.supervise_once()
            now = time.monotonic()
            if now >= next_view:
                rows = self.status_rows()
                if tty:
                    self.out.write("\x1b[s\x1b[J" + "\n".join(rows) + "\n\x1b[u")
                    self.out.flush()
                    next_view = now + 2
                else:
                    self.say("status:\n" + "\n".join(rows))
                    next_view = now + 15
            if deadline is not None and now >= deadline:
                break

    # --- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()
        for c in self.children:
            if c.alive():
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in self.children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"  {c.name} did not stop within {STOP_TIMEOUT_S:.0f}s; killing it")
                c.proc.kill()
                c.proc.wait()
        for c in self.children:
            c.close_log()
        if self.broker is not None:
            self.broker.stop()
        self.say("flowwatch up: stopped")


def main(argv: Sequence[str]) -> int:
    p = base_parser("up", "Run the whole stack on this machine (no Docker).")
    p.add_argument("--speed", type=float, default=None, help="simulated event time runs N times faster (collector.speed)")
    p.add_argument("--for", dest="duration", type=float, default=None, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--log-max-mb", type=float, default=LOG_MAX_MB, metavar="MB",
                   help=f"rotate a log under data_dir/logs when it reaches this size (default {LOG_MAX_MB:g})")
    p.add_argument("--log-files", type=int, default=LOG_FILES, metavar="N",
                   help=f"keep at most N files per log, the current one included (default {LOG_FILES})")
    args = p.parse_args(argv)
    if args.speed is not None and args.speed <= 0:
        p.error("--speed must be positive")
    if args.log_max_mb <= 0 or args.log_files < 2:
        p.error("--log-max-mb must be positive and --log-files at least 2 (the current file and an older one)")
    settings = settings_from_args(args)
    stack = Stack(settings, args.speed, log_limits=LogLimits(max(1, int(args.log_max_mb * 1024 * 1024)), args.log_files))

    def on_signal(signum: int, frame: object) -> None:
        stack.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        if not stack.children:
            stack.say("flowwatch up: no service is available in this build")
            return 1
        stack.run(args.duration)
    finally:
        stack.stop()
    return 0
