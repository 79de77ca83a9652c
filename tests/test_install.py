"""``flowwatch install``: the systemd units it writes pass ``systemd-analyze verify``, carry the
restart policy, journald logging and the sandbox, and their commands run the stack.

systemd itself is not PID 1 on the machines these tests run on (containers), so the stack is started
from the units' own ``ExecStart=`` and ``Environment=`` lines as plain processes; the test that starts
``flowwatch.target`` under systemd runs only on a box with systemd as PID 1, as root, when asked
(``FLOWWATCH_TEST_SYSTEMD=1``), because it installs into /etc/systemd/system.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from app import install
from app.broker import free_port
from app.credentials import SERVICES
from shared.store.sqlite import SqliteStore
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
ANALYZE = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze" if os.path.exists("/usr/bin/systemd-analyze") else None)
UNITS = [f"flowwatch-{n}.service" for n in ("broker", *SERVICES)] + ["flowwatch.target"]


def run_install(tmp_path: Path, config: dict, *extra: str) -> tuple[Path, Path]:
    """``flowwatch install --prefix`` into tmp_path/root with the data folder tmp_path/data."""
    prefix, data = tmp_path / "root", tmp_path / "data"
    cfg = tmp_path / "flowwatch.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert install.main(["-c", str(cfg), "--data-dir", str(data), "--prefix", str(prefix), *extra]) == 0
    return prefix, data


def unit(prefix: Path, name: str) -> dict[str, list[str]]:
    """key -> values of a unit file (all sections merged; a key given twice keeps both values)."""
    out: dict[str, list[str]] = {}
    for line in (prefix / "etc/systemd/system" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def verify(unit_dir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_LEVEL": "notice"}
    return subprocess.run([ANALYZE, "verify", *(str(unit_dir / u) for u in UNITS)], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    prefix, _ = run_install(tmp_path, {"site": "s1", "meter": "m1",
                                       "collector": {"source": "serial", "serial": {"port": "/dev/ttyUSB0"}}})
    r = verify(prefix / "etc/systemd/system")
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_verify_fails_on_a_unit_whose_program_is_missing(tmp_path: Path) -> None:
    """The check above can fail: a unit naming a program that does not exist does not pass."""
    prefix, _ = run_install(tmp_path, {"site": "s1", "meter": "m1"})
    path = prefix / "etc/systemd/system/flowwatch-detector.service"
    exe = unit(prefix, "flowwatch-detector.service")["ExecStart"][0].split()[0]
    path.write_text(path.read_text().replace(exe, str(tmp_path / "no-such-flowwatch")))
    r = verify(prefix / "etc/systemd/system")
    assert r.returncode != 0 and "no-such-flowwatch" in r.stdout + r.stderr


def test_each_service_unit_is_restarted_logged_and_sandboxed(tmp_path: Path) -> None:
    prefix, data = run_install(tmp_path, {"site": "s1", "meter": "m1",
                                          "collector": {"source": "modbus-rtu", "modbus": {"port": "/dev/ttyUSB1"}}},
                               "--serial-device", "/dev/ttyACM0", "--user", "fw")
    for name in ("broker", *SERVICES):
        u = unit(prefix, f"flowwatch-{name}.service")
        assert u["User"] == ["fw"] and u["Group"] == ["fw"]
        assert u["Restart"] == ["on-failure"] and u["StartLimitBurst"] and u["StartLimitIntervalSec"]
        assert u["StandardOutput"] == ["journal"] and u["StandardError"] == ["journal"]
        assert u["SyslogIdentifier"] == [f"flowwatch-{name}"]
        for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
                           "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}.items():
            assert u[key] == [value], f"{name}: {key}"
        assert u["PartOf"] == ["flowwatch.target"] and u["WantedBy"] == ["flowwatch.target"]
        exe = Path(shlex.split(u["ExecStart"][0])[0])
        assert exe.is_absolute() and os.access(exe, os.X_OK), exe
        if name == "broker":
            assert u["Conflicts"] == ["mosquitto.service"]  # the distribution's broker on the same port
            assert u["ReadWritePaths"] == [str(data / "mosquitto")]
            continue
        assert u["ReadWritePaths"] == [str(data)]
        assert "flowwatch-broker.service" in u["After"][0].split() and u["Requires"] == ["flowwatch-broker.service"]
        env = dict(shlex.split(e)[0].split("=", 1) for e in u["Environment"])
        assert env["FLOWWATCH_MQTT__USERNAME"] == name
        assert Path(env["FLOWWATCH_MQTT__PASSWORD_FILE"]) == data / "secrets" / "mqtt" / f"{name}.password"
        if name == "collector":  # only the meter's serial devices, read-write; the group that owns them
            assert u["DevicePolicy"] == ["closed"] and "PrivateDevices" not in u
            assert u["DeviceAllow"] == ["/dev/ttyUSB1 rw", "/dev/ttyACM0 rw"]
            assert u["SupplementaryGroups"] == ["dialout"]
        else:
            assert u["PrivateDevices"] == ["yes"] and "DeviceAllow" not in u
    target = unit(prefix, "flowwatch.target")
    assert set(target["Wants"][0].split()) == set(UNITS) - {"flowwatch.target"}
    assert target["WantedBy"] == ["multi-user.target"]
    # secrets generated at install, private; the broker logs to the journal, plain on loopback, TLS for the LAN
    secrets = prefix / str(data).lstrip("/") / "secrets"
    for f in [*(secrets / "mqtt").glob("*.password"), secrets / "mosquitto" / "passwd"]:
        assert f.stat().st_mode & 0o077 == 0, f
    assert len(list((secrets / "mqtt").glob("*.password"))) >= len(SERVICES)
    conf = (prefix / "etc/flowwatch/mosquitto.conf").read_text().splitlines()
    assert "log_dest stdout" in conf and [ln for ln in conf if ln.startswith("user ")] == ["user fw"]
    assert "listener 1883 127.0.0.1" in conf and "allow_anonymous false" in conf
    assert "listener 8883 0.0.0.0" in conf and any(line.startswith("keyfile ") and line.endswith("/tls/server.key") for line in conf)


def test_an_export_folder_outside_the_data_dir_is_writable_too(tmp_path: Path) -> None:
    prefix, data = run_install(tmp_path, {"site": "s1", "meter": "m1", "exporter": {"out_dir": "/srv/device"}})
    assert unit(prefix, "flowwatch-exporter.service")["ReadWritePaths"] == [f"{data} /srv/device"]


def test_install_refuses_a_relative_data_dir_and_a_real_install_without_root(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        install.main(["--data-dir", "var", "--prefix", str(tmp_path)])
    assert "--data-dir must be an absolute path" in capsys.readouterr().err
    if os.geteuid() != 0:
        with pytest.raises(SystemExit):
            install.main(["--data-dir", str(tmp_path / "data")])
        assert "run as root" in capsys.readouterr().err


def test_dry_run_writes_nothing(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("site: s1\nmeter: m1\n")
    assert install.main(["-c", str(cfg), "--data-dir", str(tmp_path / "data"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--- /etc/systemd/system/flowwatch-collector.service" in out and "would run: systemctl daemon-reload" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def exec_line(prefix: Path, name: str) -> tuple[list[str], dict[str, str]]:
    """A unit's command and environment, with /etc/flowwatch read from the prefix it was written to."""
    u = unit(prefix, name)
    argv = [a.replace("/etc/flowwatch", str(prefix / "etc/flowwatch")) for a in shlex.split(u["ExecStart"][0])]
    env = dict(shlex.split(e)[0].split("=", 1) for e in u.get("Environment", []))
    return argv, env


@pytest.mark.slow
@pytest.mark.broker
def test_the_stack_runs_from_the_units_commands(tmp_path: Path) -> None:
    """The broker and the five services started with their units' ExecStart and Environment (as this
    user, without systemd's sandbox): readings reach the store, and SIGTERM (systemd's stop) ends each
    one with exit code 0."""
    port = free_port()
    prefix, data = run_install(tmp_path, {"site": "s1", "meter": "m1", "mqtt": {"port": port}, "broker": {"tls_port": free_port()},
                                          "collector": {"speed": 600.0}}, "--user", pwd.getpwuid(os.geteuid()).pw_name)
    # the broker's files were written under the prefix; the unit's paths name the data folder itself
    shutil.copytree(prefix / str(data).lstrip("/"), data, dirs_exist_ok=True)
    (data / "mosquitto").mkdir(exist_ok=True)
    base = {"PATH": "/usr/sbin:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    procs: dict[str, subprocess.Popen] = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        for name in ("broker", *SERVICES):
            argv, env = exec_line(prefix, f"flowwatch-{name}.service")
            if name == "broker":
                argv[-1] = str(prefix / "etc/flowwatch/mosquitto.conf")
            with (logs / f"{name}.log").open("wb") as f:
                procs[name] = subprocess.Popen(argv, env=base | env, cwd=data, stdout=f, stderr=subprocess.STDOUT)

        def stored() -> bool:
            if not (data / "flowwatch.db").exists():
                return False
            with SqliteStore(data / "flowwatch.db") as store:
                return store.last_reading_time("s1", "m1") is not None

        def ready() -> bool:  # every service has written its heartbeat (its signal handlers are set)
            return all((data / "health" / f"{n}.json").exists() for n in SERVICES)

        ok = wait_for(stored, timeout=120, every=0.5) and wait_for(ready, timeout=120, every=0.5)
        text = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.iterdir()))
        assert ok, text
        assert all(p.poll() is None for p in procs.values()), text
    finally:
        for name in reversed(list(procs)):
            if procs[name].poll() is None:
                procs[name].send_signal(signal.SIGTERM)
        codes = {}
        for name, p in procs.items():
            try:
                codes[name] = p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = "killed"
    assert all(c == 0 for c in codes.values()), codes


SYSTEMD = Path("/run/systemd/system").is_dir()
SYSTEMD_SKIP = (
    "systemd is not PID 1 on this machine (a container); test_the_stack_runs_from_the_units_commands runs the "
    "units' commands instead" if not SYSTEMD else
    "installs into /etc/systemd/system: run as root with FLOWWATCH_TEST_SYSTEMD=1 on a test box"
    if os.environ.get("FLOWWATCH_TEST_SYSTEMD") != "1" or os.geteuid() != 0 else ""
)


@pytest.mark.slow
@pytest.mark.skipif(bool(SYSTEMD_SKIP), reason=SYSTEMD_SKIP)
def test_systemd_starts_the_stack_from_the_units(tmp_path: Path) -> None:
    data = Path("/var/lib/flowwatch-test")
    cfg = tmp_path / "flowwatch.yaml"
    cfg.write_text(yaml.safe_dump({"site": "s1", "meter": "m1", "mqtt": {"port": free_port()}, "collector": {"speed": 600.0}}))
    assert install.main(["-c", str(cfg), "--data-dir", str(data)]) == 0
    try:
        def stored() -> bool:
            db = data / "flowwatch.db"
            if not db.exists():
                return False
            with SqliteStore(db) as store:
                return store.last_reading_time("s1", "m1") is not None

        ok = wait_for(stored, timeout=180, every=1)
        status = subprocess.run(["systemctl", "status", "flowwatch.target", *UNITS], capture_output=True, text=True).stdout
        assert ok, status
    finally:
        subprocess.run(["systemctl", "disable", "--now", "flowwatch.target"], check=False)


def test_the_collector_may_open_every_meters_serial_port() -> None:
    from app.install import serial_devices
    from shared.settings import Settings

    s = Settings(collector={"source": "modbus-rtu", "modbus": {"port": "/dev/ttyUSB0"}},
                 meters=[{"id": "a"}, {"id": "b", "modbus": {"unit_id": 2}},
                         {"id": "c", "source": "serial", "serial": {"port": "/dev/ttyUSB1"}}])
    assert serial_devices(s, ["/dev/ttyACM0"]) == ["/dev/ttyUSB0", "/dev/ttyUSB1", "/dev/ttyACM0"]


def test_a_box_with_central_enabled_gets_its_bridge(tmp_path: Path) -> None:
    """`flowwatch install` writes the bridge to the central broker (as `flowwatch up` and compose do):
    the broker config includes the folder, the bridge file is private; without central, none."""
    from app.central import init_central

    central = init_central(tmp_path / "central", ["s1"])
    prefix, data = run_install(tmp_path, {"site": "s1", "meter": "m1", "central": {
        "enabled": True, "host": "central.example", "ca_file": str(central.tls.ca_cert),
        "password_file": str(central.site_password_file("s1"))}})
    from app.credentials import Secrets

    rel = Secrets(data / "secrets").conf_d.relative_to(data)
    conf_d = prefix / str(data).lstrip("/") / rel
    assert f"include_dir {data / rel}" in (prefix / "etc/flowwatch/mosquitto.conf").read_text().splitlines()
    bridge = conf_d / "bridge.conf"
    assert "connection central-s1" in bridge.read_text() and "address central.example:8883" in bridge.read_text()
    assert bridge.stat().st_mode & 0o777 == 0o600
    alone = tmp_path / "alone"
    alone.mkdir()
    prefix, data = run_install(alone, {"site": "s1", "meter": "m1"})
    assert (prefix / str(data).lstrip("/") / rel).is_dir()
    assert not (prefix / str(data).lstrip("/") / rel / "bridge.conf").exists()
