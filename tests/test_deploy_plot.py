"""``flowwatch plot`` draws a PNG from a seeded SQLite store (run as the CLI, in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from app.plot import parse_duration
from shared.messages import Anomaly, Band, Forecast, Reading, Thresholds
from shared.store.base import NightFlow
from shared.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]


def seed(path: Path) -> datetime:
    start = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    n = 36 * 60
    hours = np.arange(n) / 60.0
    flow = 120 + 60 * np.sin(2 * np.pi * (hours - 6) / 24)
    pres = 3.5 - 0.3 * np.sin(2 * np.pi * (hours - 6) / 24)
    burst = start + timedelta(hours=30)
    flow[30 * 60 : 30 * 60 + 25] += 250
    pres[30 * 60 : 30 * 60 + 25] -= 1.2
    with SqliteStore(path) as s:
        s.write_readings([
            Reading(site="site1", meter="meter1", ts=start + timedelta(minutes=i), seq=i, flow_rate=float(flow[i]),
                    pressure=float(pres[i]), source="simulator") for i in range(n)
        ])
        for h in range(24, 35):
            issued = start + timedelta(hours=h)
            i = h * 60
            s.write_forecast(Forecast(site="site1", meter="meter1", signal="flow_rate", issued_at=issued, step_minutes=10,
                                      values=tuple(float(flow[i + 10 * k] + 5) for k in range(1, 7)), model="seasonal-naive"))
            s.write_forecast(Forecast(site="site1", meter="meter1", signal="pressure", issued_at=issued, step_minutes=10,
                                      values=tuple(float(pres[i + 10 * k] + 0.05) for k in range(1, 7)), model="seasonal-naive"))
        for sig, lo, hi in (("flow_rate", 40, 210), ("pressure", 2.8, 4.2)):
            s.write_thresholds(Thresholds(site="site1", meter="meter1", signal=sig, computed_at=start, method="static",
                                          bands=tuple(Band(hour=h, daytype=d, lower=lo, upper=hi) for h in range(24) for d in ("weekday", "weekend"))))
        s.write_anomalies([Anomaly(site="site1", meter="meter1", kind="burst", signal="both", severity="critical", state="closed",
                                   start=burst, end=burst + timedelta(minutes=25), ts=burst + timedelta(minutes=25), value=400.0,
                                   threshold=250.0, message="burst")])
        s.write_night_flow([NightFlow("site1", "meter1", date(2026, 3, 2), start + timedelta(hours=17), 61.0)])
    return start + timedelta(minutes=n)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    data = tmp_path / "var"
    data.mkdir()
    seed(data / "flowwatch.db")
    out = tmp_path / "plot.png"
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "plot", "--since", "12h", "-o", str(out)],
        cwd=ROOT, env={"FLOWWATCH_DATA_DIR": str(data), "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "720 readings (flow_rate, pressure)" in r.stdout and "1 anomalies" in r.stdout and "thresholds for 2 signal(s)" in r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_plot_without_readings_says_what_to_do(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "plot", "-o", str(tmp_path / "x.png")],
        cwd=ROOT, env={"FLOWWATCH_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1 and "no readings" in r.stderr and not (tmp_path / "x.png").exists()


def test_parse_duration() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("7d") == timedelta(days=7)
    with pytest.raises(ValueError, match="--since"):
        parse_duration("yesterday")


def test_plot_of_a_flow_only_meter_draws_flow_and_its_extra_values(tmp_path: Path) -> None:
    # a flow-only 15-minute meter with a totalizer and a battery: no empty pressure panel, one panel per extra value
    data = tmp_path / "var"
    data.mkdir()
    start = datetime(2026, 3, 2, tzinfo=UTC)
    with SqliteStore(data / "flowwatch.db") as s:
        s.write_readings([
            Reading(site="site1", meter="amr", ts=start + timedelta(minutes=15 * i), seq=i, flow_rate=100.0 + i % 7,
                    pressure=None, extra={"totalizer_m3": 1000.0 + 25 * i, "battery_v": 3.6}, source="replay") for i in range(96)
        ])
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"data_dir: {data}\nmeters:\n  - id: amr\n    signals: [flow_rate]\n    interval_s: 900\n")
    out = tmp_path / "amr.png"
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "plot", "-c", str(cfg), "--since", "1d", "-o", str(out)],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "(flow_rate)" in r.stdout and "2 extra value(s)" in r.stdout, r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
