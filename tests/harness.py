"""Helpers every test module may use. Real servers are started by ``app.broker`` (Mosquitto) and
``app.influxd`` (influxd), which the benchmarks use too; the fixtures are in ``conftest.py``."""

from __future__ import annotations

import time


def wait_for(cond, timeout: float = 30.0, every: float = 0.02) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds pass (generous: CI machines are busy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())
