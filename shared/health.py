"""Is a service working? Decided from its heartbeat file alone: ``flowwatch health SERVICE``, or
``python -m shared.health SERVICE`` (the same without the ``flowwatch`` dispatcher: what the Docker
healthchecks run, services/Dockerfile and docker-compose.yml).

A service writes its status (:class:`shared.messages.ServiceStatus`) to ``data_dir/health/<name>.json``
every few seconds (:mod:`shared.service`). It is healthy when that file is fresh, says ``online``,
and no failure state in it has lasted longer than its limit:

- ``broker``: the bus has not been connected since ``since`` (``mqtt.unhealthy_after_s``);
- ``store``: store or disk writes have been failing, and retried, since ``since``
  (``store.unhealthy_after_s``);
- ``meter`` (collector): no reading from the meter since ``since``
  (``collector.unhealthy_after_intervals`` × ``collector.interval_s``).

The service writes each limit next to its ``since``, so the check needs no settings but the data
folder. It runs every 15 s in every container, so it is cheap: the standard library only (no
pydantic, paho or pandas; yaml only when the data folder must be read from a config file), ~35 ms
of CPU per check against ~290 ms when it built the settings and imported the service base
(``python -m bench.health``). Exit code 0 healthy, 1 not (Docker reserves 2).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

SERVICES = ("collector", "detector", "forecaster", "exporter", "trainer", "notifier")
#: A heartbeat older than this is unhealthy (services write one every 10 s: shared/service.py).
STALE_S = 60.0
#: The data folder when neither --data-dir, FLOWWATCH_DATA_DIR nor the config file names one
#: (the default of ``Settings.data_dir``; tests/test_health.py checks they agree).
DEFAULT_DATA_DIR = Path("var")

WHAT = {"broker": "broker unreachable", "store": "store or disk failing", "meter": "meter silent"}
SETTING = {"broker": "mqtt.unhealthy_after_s", "store": "store.unhealthy_after_s",
           "meter": "collector.unhealthy_after_intervals"}


class HealthError(Exception):
    """The check itself cannot run (an unreadable config file)."""


def health_path(data_dir: Path, name: str) -> Path:
    """Where service ``name`` writes its heartbeat."""
    return Path(data_dir) / "health" / f"{name}.json"


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def judge(name: str, status: Mapping, *, age_s: float, now: float, stale_s: float = STALE_S) -> tuple[bool, str]:
    """The verdict on one heartbeat (its content ``status``, written ``age_s`` seconds ago) at wall
    time ``now``: (healthy, one line saying why). Pure: no file, no clock."""
    if status.get("state") != "online":
        return False, f"{name}: unhealthy: state {status.get('state')!r}"
    if age_s > stale_s:
        return False, f"{name}: unhealthy: heartbeat is {age_s:.0f}s old (limit {stale_s:.0f}s): the service is stuck or gone"
    failed, pending = [], []
    for kind, f in sorted((status.get("failing") or {}).items()):
        try:
            lasted, limit = now - _timestamp(f["since"]), float(f["limit_s"])
        except (KeyError, TypeError, ValueError):
            failed.append(f"unreadable failure state {kind!r}: {f!r}")
            continue
        what = f"{WHAT.get(kind, kind)} for {lasted:.0f}s"
        if lasted > limit:
            detail = f": {f['detail']}" if f.get("detail") else ""
            failed.append(f"{what} (limit {limit:.0f}s, {SETTING.get(kind, kind)}){detail}")
        else:
            pending.append(f"{what} (unhealthy after {limit:.0f}s)")
    if failed:
        return False, f"{name}: unhealthy: " + "; ".join(failed + pending)
    return True, f"{name}: healthy, heartbeat {age_s:.0f}s ago" + "".join(f"; {p}" for p in pending)


def check(data_dir: Path, name: str, *, stale_s: float = STALE_S, now: float | None = None) -> tuple[bool, str]:
    """Read service ``name``'s heartbeat under ``data_dir`` and judge it."""
    path = health_path(data_dir, name)
    try:
        status = json.loads(path.read_text())
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except (OSError, ValueError) as exc:
        return False, f"{name}: unhealthy: no heartbeat at {path} ({exc})"
    if not isinstance(status, dict):
        return False, f"{name}: unhealthy: {path} is not a status"
    return judge(name, status, age_s=age, now=time.time() if now is None else now, stale_s=stale_s)


def resolve_data_dir(data_dir: str | Path | None = None, config: str | Path | None = None,
                     environ: Mapping[str, str] | None = None) -> Path:
    """The data folder as the services see it, without building their settings: ``--data-dir``,
    else ``FLOWWATCH_DATA_DIR`` (the environment wins over the file), else ``data_dir`` of the config
    file (``--config``, else ``FLOWWATCH_CONFIG``), else the default."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ if environ is None else environ
    upper = {k.upper(): v for k, v in env.items() if k.upper() in ("FLOWWATCH_DATA_DIR", "FLOWWATCH_CONFIG")}
    if upper.get("FLOWWATCH_DATA_DIR"):
        return Path(upper["FLOWWATCH_DATA_DIR"])
    config = config or upper.get("FLOWWATCH_CONFIG")
    if config:
        import yaml  # only here: the containers set FLOWWATCH_DATA_DIR

        try:
            data = yaml.safe_load(Path(config).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise HealthError(f"cannot read config file {config}: {exc}") from exc
        if isinstance(data, dict) and data.get("data_dir"):
            return Path(str(data["data_dir"]))
    return DEFAULT_DATA_DIR


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="flowwatch health", description="Is the service working? From its heartbeat file "
                                "(exit 0 healthy, 1 not).")
    p.add_argument("service", choices=(*SERVICES, "recorder"))  # recorder: the central tier (services/recorder)
    p.add_argument("-c", "--config", metavar="FILE", default=None,
                   help="YAML config file, for its data_dir (default: $FLOWWATCH_CONFIG); FLOWWATCH_DATA_DIR wins")
    p.add_argument("--data-dir", metavar="DIR", type=Path, default=None, help="data folder (default: as the services)")
    p.add_argument("--stale-s", type=float, default=STALE_S, help="a heartbeat older than this is unhealthy")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        data_dir = resolve_data_dir(args.data_dir, args.config)
    except HealthError as exc:
        print(f"{args.service}: unhealthy: {exc}")
        return 1
    ok, text = check(data_dir, args.service, stale_s=args.stale_s)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
