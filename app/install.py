"""``flowwatch install``: run the stack under systemd on a Debian box, without Docker.

Writes, for the Python environment this command runs from (its ``flowwatch`` executable):

- ``/etc/systemd/system/flowwatch-broker.service``: Mosquitto with the project config
  (``app.broker.render_config``), logging to the journal; it replaces the distribution's
  ``mosquitto.service`` on the same port (``Conflicts=``);
- ``/etc/systemd/system/flowwatch-<service>.service`` for the five services: ``After=`` and
  ``Requires=`` the broker, ``Restart=on-failure`` within a start limit, journald logging, and
  sandboxed (read-only system, writable data folder only, no capabilities, no devices but the
  meter's serial device for the collector);
- ``/etc/systemd/system/flowwatch.target`` grouping them (``systemctl start|stop flowwatch.target``);
- ``/etc/flowwatch/flowwatch.yaml`` (the ``--config`` given, else a minimal one) and
  ``/etc/flowwatch/mosquitto.conf``;
- the secrets in ``<data_dir>/secrets`` (``app.credentials.ensure_secrets``, kept when present).

Every service runs as one system user (``--user``, default ``flowwatch``) that owns the data folder.
Each unit passes the service its own MQTT user and password file through ``FLOWWATCH_*`` variables,
as docker-compose.yml does. ``--prefix DIR`` writes the same files under DIR (paths inside them stay
the real ones) and changes nothing else; ``--dry-run`` prints them. docs/install.md is the guide.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.credentials import SERVICES, Secrets, ensure_secrets
from shared.fileio import atomic_write
from shared.runner import base_parser, settings_from_args
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "install.md"
ETC = Path("/etc/flowwatch")
UNIT_DIR = Path("/etc/systemd/system")
DATA_DIR = Path("/var/lib/flowwatch")
TARGET = "flowwatch.target"
BROKER_UNIT = "flowwatch-broker.service"
SERIAL_GROUP = "dialout"  # owner group of /dev/ttyUSB* and /dev/ttyS* on Debian

# What each unit may do. The services need the network (MQTT, InfluxDB) and their data folder; the
# collector also its serial device. MemoryDenyWriteExecute is left out: TensorFlow's and LiteRT's
# kernels map executable memory.
HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0027"""

# A crash-looping unit stops after START_BURST starts within START_INTERVAL_S (then `systemctl
# reset-failed` or a fix); a single crash is restarted after RESTART_S.
RESTART_S, START_BURST, START_INTERVAL_S = 5, 10, 600


@dataclass(frozen=True)
class Layout:
    """Where the installed files live on the box (the paths written inside the units)."""

    exe: Path  # the flowwatch executable the units run
    mosquitto: Path
    data_dir: Path = DATA_DIR
    etc: Path = ETC
    unit_dir: Path = UNIT_DIR
    user: str = "flowwatch"

    @property
    def config(self) -> Path:
        return self.etc / "flowwatch.yaml"

    @property
    def broker_conf(self) -> Path:
        return self.etc / "mosquitto.conf"

    @property
    def secrets(self) -> Path:
        return self.data_dir / "secrets"


def flowwatch_exe() -> Path:
    """The ``flowwatch`` script of the environment this command runs in."""
    exe = Path(sys.executable).parent / "flowwatch"
    if not exe.exists():
        raise SystemExit(f"flowwatch install: {exe} not found; install the project into this environment first "
                         "(./flowwatch does it, or pip install --no-deps . after the lock)")
    return exe.absolute()


def mosquitto_exe() -> Path:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        raise SystemExit("flowwatch install: mosquitto is not installed (apt-get install mosquitto)")
    return Path(exe)


def serial_devices(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """The serial devices the collector opens: the configured RS485 ports (each meter's too), plus ``extra``."""
    sources = [settings.meter_source(m) for m in settings.meter_ids]
    ports = [src.cfg.port for src in sources if src.kind in ("serial", "modbus-rtu")]
    found = [settings.collector.serial.port, settings.collector.modbus.port, *ports, *extra]
    out: list[str] = []
    for dev in found:
        if dev and dev.startswith("/dev/") and dev not in out:
            out.append(dev)
    return out


def writable_paths(settings: Settings, layout: Layout) -> list[Path]:
    """The folders the services write: the data folder, and configured ones outside it."""
    out = [layout.data_dir]
    candidates = [settings.path(settings.exporter.out_dir)]
    if settings.store.backend == "sqlite":
        candidates.append(settings.path(settings.store.sqlite.path).parent)
    for p in candidates:
        p = p if p.is_absolute() else layout.data_dir / p
        if not any(p == w or w in p.parents for w in out):
            out.append(p)
    return out


def service_unit(name: str, settings: Settings, layout: Layout, devices: Sequence[str]) -> str:
    from app.cli import COMMANDS

    password_file = Secrets(layout.secrets).mqtt_password_file(name)
    env = {
        "FLOWWATCH_MQTT__HOST": "127.0.0.1",
        "FLOWWATCH_MQTT__PORT": str(settings.mqtt.port),
        "FLOWWATCH_MQTT__USERNAME": name,
        "FLOWWATCH_MQTT__PASSWORD_FILE": str(password_file),
        "PYTHONUNBUFFERED": "1",
        "MPLCONFIGDIR": str(layout.data_dir / ".matplotlib"),
    }
    devices_part = "PrivateDevices=yes"
    groups = ""
    if name == "collector" and devices:
        devices_part = "DevicePolicy=closed\n" + "\n".join(f"DeviceAllow={d} rw" for d in devices)
        groups = f"SupplementaryGroups={SERIAL_GROUP}\n"
    rw = " ".join(str(p) for p in writable_paths(settings, layout))
    return f"""\
# Written by `flowwatch install`; run it again instead of editing (docs/install.md).
[Unit]
Description=flowwatch {name}: {COMMANDS[name][1]}
Documentation=file://{DOCS}
After=network-online.target {BROKER_UNIT}
Wants=network-online.target
Requires={BROKER_UNIT}
PartOf={TARGET}
StartLimitIntervalSec={START_INTERVAL_S}
StartLimitBurst={START_BURST}

[Service]
Type=simple
User={layout.user}
Group={layout.user}
{groups}WorkingDirectory={layout.data_dir}
ExecStart={layout.exe} {name} --config {layout.config} --data-dir {layout.data_dir}
{chr(10).join(f'Environment="{k}={v}"' for k, v in env.items())}
Restart=on-failure
RestartSec={RESTART_S}
TimeoutStopSec=30
StandardOutput=journal
StandardError=journal
SyslogIdentifier=flowwatch-{name}
ReadWritePaths={rw}
{devices_part}
{HARDENING}

[Install]
WantedBy={TARGET}
"""


def broker_unit(layout: Layout) -> str:
    return f"""\
# Written by `flowwatch install`; run it again instead of editing (docs/install.md).
[Unit]
Description=flowwatch broker: Mosquitto with the project config
Documentation=file://{DOCS}
After=network-online.target
Wants=network-online.target
Conflicts=mosquitto.service
PartOf={TARGET}
StartLimitIntervalSec={START_INTERVAL_S}
StartLimitBurst={START_BURST}

[Service]
Type=simple
User={layout.user}
Group={layout.user}
ExecStart={layout.mosquitto} -c {layout.broker_conf}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec={RESTART_S}
StandardOutput=journal
StandardError=journal
SyslogIdentifier=flowwatch-broker
ReadWritePaths={layout.data_dir / "mosquitto"}
PrivateDevices=yes
{HARDENING}

[Install]
WantedBy={TARGET}
"""


def target_unit(names: Sequence[str]) -> str:
    units = " ".join([BROKER_UNIT, *(f"flowwatch-{n}.service" for n in names)])
    return f"""\
# Written by `flowwatch install`. systemctl start|stop|restart flowwatch.target
[Unit]
Description=flowwatch: broker and services
Wants={units}
After={units}

[Install]
WantedBy=multi-user.target
"""


def broker_conf(settings: Settings, layout: Layout) -> str:
    """The project's mosquitto.conf for this box: loopback listener, files under the data folder, log
    to stdout (the journal). ``user``: started as root, mosquitto switches to the flowwatch user (under
    systemd it is started as that user already, and the line is ignored)."""
    from app.broker import box_tls_listener, render_config
    from app.tls import TlsFiles

    s = Secrets(layout.secrets)
    tls = box_tls_listener(settings.broker, TlsFiles(s.tls_folder))  # TLS off the box (app/tls.py; written by install below)
    text = render_config(
        host="127.0.0.1", port=settings.mqtt.port, password_file=s.mosquitto_passwd,
        data_dir=layout.data_dir / "mosquitto", log_file=Path("/dev/null"), acl_file=s.acl_file,
        overrides={}, tls=tls,
    )
    if not any(line.startswith("user ") for line in text.splitlines()):
        text = f"user {layout.user}\n{text}"
    lines = []
    for line in text.splitlines():
        key = line.split(" ", 1)[0]
        if key == "user":
            line = f"user {layout.user}"
        lines.append("log_dest stdout" if key == "log_dest" else line)
    lines.append(f"include_dir {s.conf_d}")  # the bridge to the central broker, when central.enabled (written by install)
    return "# Written by `flowwatch install` from mosquitto/mosquitto.conf; run it again instead of editing.\n" \
        + "\n".join(lines) + "\n"


def default_config(settings: Settings) -> str:
    return ("# flowwatch configuration (docs/configuration.md); `flowwatch config check FILE` validates it.\n"
            "# The systemd units set data_dir and each service's MQTT user; no secret belongs here.\n"
            + yaml.safe_dump({"site": settings.site, "meter": settings.meter}, sort_keys=False))


def render(settings: Settings, layout: Layout, config_text: str, devices: Sequence[str]) -> dict[Path, tuple[str, int]]:
    """Every file to write: real path -> (text, mode)."""
    files = {
        layout.config: (config_text, 0o640),
        layout.broker_conf: (broker_conf(settings, layout), 0o644),
        layout.unit_dir / BROKER_UNIT: (broker_unit(layout), 0o644),
        layout.unit_dir / TARGET: (target_unit(SERVICES), 0o644),
    }
    for name in SERVICES:
        files[layout.unit_dir / f"flowwatch-{name}.service"] = (service_unit(name, settings, layout, devices), 0o644)
    return files


def under(prefix: Path | None, path: Path) -> Path:
    return path if prefix is None else prefix / path.relative_to("/")


def run(cmd: list[str], dry: bool, out) -> None:
    print(f"  {'would run' if dry else 'running'}: {' '.join(cmd)}", file=out)
    if not dry:
        subprocess.run(cmd, check=True)


def install(settings: Settings, layout: Layout, config_text: str, devices: Sequence[str], *,
            prefix: Path | None, dry_run: bool, start: bool, out=None) -> dict[Path, tuple[str, int]]:
    out = out or sys.stdout
    files = render(settings, layout, config_text, devices)
    system = prefix is None and not dry_run  # only then users, owners and systemctl are touched
    if dry_run:
        for path, (text, mode) in files.items():
            print(f"--- {path} ({mode:o})\n{text}", file=out)
    else:
        for path, (text, mode) in files.items():
            target = under(prefix, path)
            if path == layout.config and target.exists():
                print(f"  kept {target} (exists)", file=out)
                continue
            atomic_write(target, text.encode(), mode=mode)
            print(f"  wrote {target}", file=out)
        data = under(prefix, layout.data_dir)
        for d in (data, data / "mosquitto"):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o750)
        secrets = ensure_secrets(under(prefix, layout.secrets))
        from app.broker import write_acl
        from app.tls import ensure_tls

        ensure_tls(secrets.tls_folder, settings.broker.cert_names)
        from app.central import write_box_bridge

        secrets.conf_d.mkdir(parents=True, exist_ok=True)  # include_dir of the broker config: must exist
        if write_box_bridge(settings, secrets.conf_d):  # 0600, the site's password for the central broker
            print(f"  bridge to the central broker {settings.central.host}:{settings.central.port} in {secrets.conf_d}", file=out)

        write_acl(secrets.acl_file, [(settings.site, m) for m in settings.meter_ids])
        print(f"  secrets ready in {secrets.folder}", file=out)
    steps: list[list[str]] = []
    try:
        pwd.getpwnam(layout.user)
    except KeyError:
        steps.append(["useradd", "--system", "--user-group", "--home-dir", str(layout.data_dir), "--no-create-home",
                      "--shell", "/usr/sbin/nologin", layout.user])
    steps.append(["chown", "-R", f"{layout.user}:{layout.user}", str(layout.data_dir)])
    steps.append(["chown", f"root:{layout.user}", str(layout.config)])
    steps.append(["systemctl", "daemon-reload"])
    steps.append(["systemctl", "enable", *(["--now"] if start else []), TARGET])
    if system:
        for cmd in steps:
            run(cmd, False, out)
    else:
        print("system changes not made (--prefix/--dry-run); a real install runs:", file=out)
        for cmd in steps:
            run(cmd, True, out)
    return files


def main(argv: Sequence[str]) -> int:
    p = base_parser("install", "Install the stack as systemd units (Debian, no Docker); run as root.")
    for action in p._actions:  # the shared option, with this command's default
        if action.dest == "data_dir":
            action.help = f"data folder the units use (default {DATA_DIR}; the config's data_dir is not used)"
    p.add_argument("--user", default="flowwatch", help="system user the broker and services run as (created if missing)")
    p.add_argument("--serial-device", action="append", default=[], metavar="DEV",
                   help="a serial device the collector may open besides the configured ones (repeatable)")
    p.add_argument("--prefix", type=Path, default=None, metavar="DIR",
                   help="write the files under DIR for inspection; change nothing else on the system")
    p.add_argument("--dry-run", action="store_true", help="print the files and the commands; write nothing")
    p.add_argument("--no-start", action="store_true", help="enable the units but do not start them now")
    args = p.parse_args(argv)
    if args.data_dir is None:
        args.data_dir = DATA_DIR
    if not args.data_dir.is_absolute():
        p.error("--data-dir must be an absolute path (the units name it)")
    settings = settings_from_args(args)
    layout = Layout(exe=flowwatch_exe(), mosquitto=mosquitto_exe(), data_dir=args.data_dir, user=args.user)
    if args.prefix is None and not args.dry_run:
        if os.geteuid() != 0:
            p.error("run as root (sudo), or with --prefix DIR / --dry-run to see what it writes")
        if not Path("/run/systemd/system").is_dir():
            p.error("systemd is not running on this machine; use --prefix DIR to write the units for inspection")
        home = [x for x in (layout.exe, ROOT, Path(sys.executable).resolve())
                if Path("/home") in x.parents or Path("/root") in x.parents]
        if home:
            p.error(f"{home[0]} is under /home or /root, which the units hide (ProtectHome=yes); "
                    "install flowwatch under /opt (docs/install.md)")
    devices = serial_devices(settings, args.serial_device)
    if devices:
        try:
            grp.getgrnam(SERIAL_GROUP)
        except KeyError:
            print(f"warning: group {SERIAL_GROUP} not found; the collector may not open {', '.join(devices)}", file=sys.stderr)
    config_text = Path(args.config).read_text() if args.config else default_config(settings)
    install(settings, layout, config_text, devices, prefix=args.prefix, dry_run=args.dry_run, start=not args.no_start)
    return 0
