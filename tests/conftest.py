"""Fixtures that start real parts on free ports: mosquitto, influxd, SQLite files.

- ``broker``: a session-wide mosquitto with persistence and a password (no anonymous access).
- ``fresh_broker``: a mosquitto of one's own, for tests that kill or restart it.
- ``influxd``: a session-wide influxd (Debian's influxdb 1.6.7) in temp dirs.
- ``store``: parametrized over both adapters; each test gets an empty SQLite file or a new database.
- ``settings``: Settings pointing at the broker and a temp data_dir.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import settings as hsettings

from app.broker import MosquittoProcess, mqtt_settings
from app.influxd import InfluxProcess, have_influxd
from shared.settings import Settings
from shared.store.sqlite import SqliteStore

# Property-based tests draw the same inputs on every run, so a CI run is reproducible, not a lottery.
# FLOWWATCH_FUZZ=explore draws new ones each run (a fuzzing session); pin what it finds with @example.
hsettings.register_profile("fixed", derandomize=True, database=None)
hsettings.register_profile("explore", derandomize=False)
hsettings.load_profile("explore" if os.environ.get("FLOWWATCH_FUZZ") == "explore" else "fixed")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    b = MosquittoProcess(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path):
    b = MosquittoProcess(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory):
    if not have_influxd():
        pytest.fail("influxd not found: install Debian's 'influxdb' package (.ci/run does this)")
    p = InfluxProcess(tmp_path_factory.mktemp("influxd")).start()
    yield p
    p.stop()


@pytest.fixture
def mqtt(broker):
    return mqtt_settings(broker)


@pytest.fixture
def settings(tmp_path: Path, broker) -> Settings:
    return Settings(data_dir=tmp_path / "var", mqtt=mqtt_settings(broker).model_dump())


def _influx_store(influxd: InfluxProcess):
    from shared.store.influx import InfluxStore

    return InfluxStore(influxd.settings(database=f"t_{uuid.uuid4().hex[:12]}"))


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.db")
    else:
        s = _influx_store(request.getfixturevalue("influxd"))
    yield s
    s.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Mark tests by the real parts they use, so `-m "not influx"` etc. work.
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"broker", "fresh_broker", "mqtt", "settings"}:
            item.add_marker(pytest.mark.broker)
        if "influxd" in names or (hasattr(item, "callspec") and item.callspec.params.get("store") == "influxdb"):
            item.add_marker(pytest.mark.influx)


@pytest.fixture
def umask():
    """Set the process umask inside a test (``umask(0o002)``); the old one comes back after it."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)
