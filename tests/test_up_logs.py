"""``flowwatch up`` logs rotate by size: each service's output goes through a pipe into
``data_dir/logs/NAME.log`` with at most ``--log-files`` files of ``--log-max-mb``; the broker's own
log file is renamed and mosquitto reopens it on SIGHUP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from app.broker import MosquittoProcess
from app.up import Child, LogLimits, Stack, main
from shared.settings import Settings
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
LINE = "x" * 90  # + " NNNNN\n": 97 bytes a line


def test_a_child_log_rotates_and_keeps_the_newest_lines(tmp_path: Path) -> None:
    n, limits = 5000, LogLimits(max_bytes=50_000, files=3)  # ~485 kB written, 3 files of <= 50 kB kept
    code = f"import sys\nfor i in range({n}): print('{LINE} %05d' % i)\nprint('é % done', file=sys.stderr)"
    log = tmp_path / "logs" / "svc.log"
    child = Child("svc", [sys.executable, "-c", code], log, {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}, limits=limits)
    child.start()
    child.proc.wait(60)
    child.close_log()
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["svc.log", "svc.log.1", "svc.log.2"], files
    for p in log.parent.iterdir():
        assert 0 < p.stat().st_size <= limits.max_bytes, (p, p.stat().st_size)
    # the kept lines are the newest ones, in order, with none missing between the files
    lines = (log.with_name("svc.log.2").read_text() + log.with_name("svc.log.1").read_text() + log.read_text()).splitlines()
    assert lines[-1] == "é % done"  # stderr too, text kept as written (no %-formatting)
    numbers = [int(ln.rsplit(" ", 1)[1]) for ln in lines[:-1]]
    assert numbers == list(range(numbers[0], n)) and numbers[0] > 0


def test_a_restarted_child_appends_to_the_same_rotating_log(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    child = Child("svc", [sys.executable, "-c", "print('run')"], log, {"PATH": "/usr/bin:/bin"},
                  limits=LogLimits(max_bytes=1_000_000, files=2))
    for _ in range(3):
        child.start()
        child.proc.wait(60)
    child.close_log()
    assert log.read_text().splitlines() == ["run"] * 3


def test_log_limits_are_checked(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError):
        LogLimits(max_bytes=1000, files=1)  # one file would never be truncated
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "--log-files", "1"])
    assert "--log-files at least 2" in capsys.readouterr().err


@pytest.mark.broker
def test_the_broker_log_rotates_and_mosquitto_reopens_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    stack = Stack(settings, None, out=open("/dev/null", "w"), log_limits=LogLimits(max_bytes=2_000, files=3))
    broker = MosquittoProcess(tmp_path / "mosquitto")
    stack.broker = broker.start()
    try:
        with broker.log.open("a") as f:
            f.write("old line\n" * 300)  # 2.7 kB: over the limit
        stack.supervise_once()
        rotated = broker.log.with_name("mosquitto.log.1")
        assert rotated.exists() and "old line" in rotated.read_text()
        # mosquitto reopened its log: a new client's connection is logged in a new mosquitto.log
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rotation-check")
        c.username_pw_set(broker.username, broker.password)
        c.connect(broker.host, broker.port)
        c.loop_start()
        try:
            assert wait_for(lambda: broker.log.exists() and "rotation-check" in broker.log.read_text(), timeout=30), \
                (broker.log.read_text() if broker.log.exists() else "no new log")
        finally:
            c.loop_stop()
            c.disconnect()
        assert "rotation-check" not in rotated.read_text()
    finally:
        broker.stop()


@pytest.mark.slow
@pytest.mark.broker
def test_up_rotates_the_service_logs(tmp_path: Path) -> None:
    """The real thing: `flowwatch up` with 256-byte logs and 3 files; at DEBUG the collector's startup
    lines alone (settings, source, broker, ready: ~1 kB) fill one."""
    data = tmp_path / "var"
    cfg = tmp_path / "flowwatch.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data), "site": "site1", "meter": "meter1", "log_level": "DEBUG"}))
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "MPLCONFIGDIR": str(tmp_path), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "app.cli", "up", "-c", str(cfg), "--speed", "600", "--for", "25",
                        "--log-max-mb", str(256 / 1024 / 1024), "--log-files", "3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    logs = data / "logs"
    names = sorted(p.name for p in logs.iterdir())
    assert r.returncode == 0, r.stdout + r.stderr + str(names)
    limit = 256
    assert "collector.log.1" in names, names  # rotated
    for p in logs.iterdir():
        assert p.name.split(".log")[1] in ("", ".1", ".2"), names  # never more than 3 files per log
        assert p.stat().st_size <= limit + 4000, (p.name, p.stat().st_size)  # a file holds one line over the limit at most
    # the newest lines are kept (the oldest were dropped with the oldest file): the stop is the last line
    assert "collector stopped" in (logs / "collector.log").read_text().splitlines()[-1]
