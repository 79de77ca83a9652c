"""Secrets generated on first start: MQTT passwords, the Mosquitto password file, InfluxDB token.

``ensure_secrets(folder)`` creates what is missing and keeps what exists, so a second start (or a
container restart) reuses the same secrets. Nothing here has a default: every secret is
``secrets.token_urlsafe`` output written with mode 0600 (0400 / 0440 for Docker, below).

Layout of the folder (``data_dir/secrets`` for ``flowwatch up``; the ``secrets`` volume, mounted at
``/run/flowwatch-secrets``, for docker compose)::

    mqtt/<user>.password         one per MQTT user (USERS)     -> mqtt.password_file
    mosquitto/passwd             Mosquitto password file (PBKDF2-SHA512, the mosquitto_passwd format)
    mosquitto/acl                mosquitto/acl with the collector limited to the configured meters (0644)
    influxdb/token               InfluxDB API token            -> store.influxdb.token_file
    influxdb/admin-password      InfluxDB 2.x admin user (setup mode)
    grafana/admin-password       Grafana admin user
    tls/ca.crt, server.crt/.key  CA and broker certificate of the TLS listener (app/tls.py; ca.key kept to reissue)
    mosquitto/conf.d/            bridge.conf + central-ca.crt when central.enabled (app/central.py)

``flowwatch secrets init --dir DIR [--docker]`` is the compose ``init`` service; with ``--docker``
(run as root) each file is owned by the uid of the one container that reads it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.tls import TlsFiles
from shared.fileio import atomic_write

logger = logging.getLogger(__name__)

SERVICES = ("collector", "detector", "forecaster", "exporter", "trainer", "notifier")
# One MQTT user per service, one for the embedded device, one for the operator tools, one for the
# broker's Docker healthcheck (it connects and subscribes; with no entry of its own in the ACL it
# receives nothing; a user of its own, so the check never takes over a real client's id).
USERS = (*SERVICES, "device", "operator", "healthcheck")

# Docker: numeric ids of the users the containers run as (services/Dockerfile creates them from the
# SERVICE_UID build arg that docker-compose.yml passes; tests/test_deploy_compose.py checks they agree).
GID_FLOWWATCH = 10000  # group of every flowwatch container, owner group of the shared volumes
SERVICE_UIDS = {"collector": 10010, "detector": 10020, "forecaster": 10030, "exporter": 10040, "trainer": 10050, "notifier": 10060}
UID_MOSQUITTO = 1883  # eclipse-mosquitto image
UID_GRAFANA = 472  # grafana image
UID_INFLUXDB = 1000  # influxdb:2.7 image

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for its $7$ (PBKDF2-SHA512) format
SALT_BYTES = 12


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A password hash in Mosquitto 2.0's ``$7$`` format, as ``mosquitto_passwd`` writes it."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file readable only by its owner, atomically and durably (never readable by others, even while written)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, text.encode(), mode=mode)


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """A Mosquitto password file for ``users`` (name -> clear password)."""
    for name in users:
        if not name or ":" in name or "\n" in name:
            raise ValueError(f"invalid MQTT user name {name!r}")
    write_private(path, "".join(f"{u}:{mosquitto_hash(p)}\n" for u, p in users.items()))


@dataclass(frozen=True)
class Secrets:
    """Where the generated secrets are; reading one returns its clear text."""

    folder: Path

    def mqtt_password_file(self, user: str) -> Path:
        return self.folder / "mqtt" / f"{user}.password"

    def mqtt_password(self, user: str) -> str:
        return self.mqtt_password_file(user).read_text().strip()

    @property
    def mosquitto_passwd(self) -> Path:
        return self.folder / "mosquitto" / "passwd"

    @property
    def acl_file(self) -> Path:
        """The broker's ACL narrowed to the configured meters (``app.broker.render_acl``); not secret."""
        return self.folder / "mosquitto" / "acl"

    @property
    def influx_token_file(self) -> Path:
        return self.folder / "influxdb" / "token"

    @property
    def influx_admin_password_file(self) -> Path:
        return self.folder / "influxdb" / "admin-password"

    @property
    def grafana_admin_password_file(self) -> Path:
        return self.folder / "grafana" / "admin-password"

    @property
    def tls_folder(self) -> Path:
        """CA and server certificate of the broker's TLS listener (app/tls.py)."""
        return self.folder / "tls"

    @property
    def conf_d(self) -> Path:
        """Extra broker config included by mosquitto.conf (the bridge to the central broker)."""
        return self.folder / "mosquitto" / "conf.d"

    def users(self) -> dict[str, str]:
        return {u: self.mqtt_password(u) for u in USERS}


def _new_secret() -> str:
    return secrets.token_urlsafe(24)


def ensure_secrets(folder: Path, users: Sequence[str] = USERS, extra: Mapping[str, Path] | None = None) -> Secrets:
    """Generate every missing secret under ``folder``; keep the ones that exist.

    ``extra``: more users of the Mosquitto password file, user -> its password file (outside ``mqtt/``,
    e.g. the central broker's ``sites/<site>.password``), generated like the others when missing.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    s = Secrets(folder)
    extra = dict(extra or {})
    created = []
    for user, f in [*((u, s.mqtt_password_file(u)) for u in users), *extra.items()]:
        if not f.exists() or not f.read_text().strip():
            write_private(f, _new_secret())
            created.append(f"mqtt/{user}" if user not in extra else str(f))
    for f in (s.influx_token_file, s.influx_admin_password_file, s.grafana_admin_password_file):
        if not f.exists() or not f.read_text().strip():
            write_private(f, _new_secret())
            created.append(str(f.relative_to(folder)))
    # The password file is derived from the passwords: rewrite it when a user is new or missing.
    current = {u: s.mqtt_password(u) for u in users} | {u: f.read_text().strip() for u, f in extra.items()}
    if created or not _passwd_matches(s.mosquitto_passwd, current):
        write_password_file(s.mosquitto_passwd, current)
        created.append("mosquitto/passwd")
    if created:
        logger.info("generated secrets in %s: %s", folder, ", ".join(created))
    return s


def _passwd_matches(path: Path, users: dict[str, str]) -> bool:
    try:
        lines = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    except OSError:
        return False
    for user, pw in users.items():
        h = lines.get(user, "")
        parts = h.split("$")  # ['', '7', iterations, salt, hash]
        if len(parts) != 5 or parts[1] != "7":
            return False
        try:
            salt = base64.b64decode(parts[3])
            if mosquitto_hash(pw, salt=salt, iterations=int(parts[2])) != h:
                return False
        except (ValueError, TypeError):
            return False
    return set(lines) == set(users)


def set_docker_owners(s: Secrets) -> None:
    """Give each file to the container that reads it (``flowwatch secrets init --docker``, as root).

    A service reads only its own MQTT password; Mosquitto its password file; the InfluxDB token is
    shared by InfluxDB, Grafana and the services that use the store (group GID_FLOWWATCH, which the
    compose file adds to the InfluxDB and Grafana containers).
    """
    def own(path: Path, uid: int, gid: int, mode: int) -> None:
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    for d in [s.folder, *(p for p in s.folder.rglob("*") if p.is_dir())]:
        own(d, 0, GID_FLOWWATCH, 0o711)  # traversable, not listable: each file says who reads it
    for name, uid in SERVICE_UIDS.items():
        own(s.mqtt_password_file(name), uid, 0, 0o400)
    for user in ("device", "operator", "healthcheck"):  # healthcheck: read by the mosquitto container's check (root)
        own(s.mqtt_password_file(user), 0, 0, 0o400)
    own(s.mosquitto_passwd, UID_MOSQUITTO, 0, 0o400)
    own(s.influx_token_file, 0, GID_FLOWWATCH, 0o440)
    own(s.influx_admin_password_file, 0, GID_FLOWWATCH, 0o440)
    own(s.grafana_admin_password_file, UID_GRAFANA, 0, 0o400)
    tls = TlsFiles(s.tls_folder)
    if tls.folder.exists():
        own(tls.server_key, UID_MOSQUITTO, 0, 0o400)
        own(tls.ca_key, 0, 0, 0o400)
        for f in (tls.ca_cert, tls.server_cert):
            own(f, 0, 0, 0o444)
    if s.conf_d.exists():  # include_dir: Mosquitto lists the folder
        own(s.conf_d, UID_MOSQUITTO, 0, 0o500)
        for f in s.conf_d.glob("*"):
            own(f, UID_MOSQUITTO, 0, 0o400)


def prepare_data_dirs(paths: Sequence[Path]) -> None:
    """Shared volumes: group GID_FLOWWATCH, group-writable, setgid so new files keep the group."""
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)
        os.chown(p, 0, GID_FLOWWATCH)
        os.chmod(p, 0o2775)


def main(argv: Sequence[str]) -> int:
    from shared.runner import base_parser, settings_from_args

    p = base_parser("secrets", "Generate the secrets on first start; keep them on later starts.")
    sub = p.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="create the missing secrets (idempotent)")
    init.add_argument("--dir", type=Path, default=None, help="secrets folder (default: <data_dir>/secrets)")
    init.add_argument("--docker", action="store_true", help="as root: set the owners the compose containers need")
    init.add_argument("--data-dirs", type=Path, nargs="*", default=[], help="with --docker: shared volume folders to prepare")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    folder = args.dir or settings.data_dir / "secrets"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    s = ensure_secrets(folder)
    from app.broker import write_acl  # the broker's ACL, narrowed to the configured meters (not secret)

    write_acl(s.acl_file, [(settings.site, m) for m in settings.meter_ids])
    from app.central import write_box_bridge
    from app.tls import ensure_tls

    ensure_tls(s.tls_folder, settings.broker.cert_names)  # the broker's TLS listener (mosquitto/mosquitto.conf)
    s.conf_d.mkdir(parents=True, exist_ok=True)  # include_dir of mosquitto.conf: must exist
    write_box_bridge(settings, s.conf_d)
    if args.docker:
        if os.geteuid() != 0:
            print("flowwatch secrets init --docker must run as root (it sets file owners)")
            return 2
        set_docker_owners(s)
        prepare_data_dirs(args.data_dirs)
    print(f"secrets ready in {folder}")
    return 0
