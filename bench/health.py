"""Benchmark: CPU time of one health check (Docker runs one per service every 15 s).

    python -m bench.health [--quick] [--runs N]

Each variant runs N times (20; 5 with --quick), each in a process of its own, in the containers'
environment (FLOWWATCH_CONFIG and FLOWWATCH_DATA_DIR set, a fresh heartbeat); CPU is the user +
system time of the child process (its rusage), median. Variants: the interpreter alone (the
floor); `python -m shared.health` (the Docker healthcheck); `flowwatch health` (the dispatcher,
app.cli); and what the check cost before it was made cheap: building the settings and importing
the service base (paho, pydantic, the store), as app/health.py did. The share of a core is for
five services checked every 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import table

ROOT = Path(__file__).resolve().parents[1]
SERVICES, EVERY_S = 5, 15.0

VARIANTS = [
    ("interpreter alone (floor)", [sys.executable, "-c", "pass"]),
    ("python -m shared.health (Docker healthcheck)", [sys.executable, "-m", "shared.health", "collector"]),
    ("flowwatch health (app.cli)", [sys.executable, "-m", "app.cli", "health", "collector"]),
    ("before: settings + service base loaded", [sys.executable, "-c", "import shared.runner, shared.service, shared.settings as s; "
                                                "s.load_settings()"]),
]


def cpu_of(cmd: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + system) of one run of ``cmd`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.health", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=None)
    args = p.parse_args(argv)
    runs = args.runs or (5 if args.quick else 20)
    with tempfile.TemporaryDirectory() as tmp:
        hb = Path(tmp) / "health" / "collector.json"
        hb.parent.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWWATCH_DATA_DIR": tmp,
               "FLOWWATCH_CONFIG": str(ROOT / "config" / "flowwatch.yaml")}
        rows, floor = [], None
        for label, cmd in VARIANTS:
            values = []
            for _ in range(runs):
                hb.write_text(json.dumps({"service": "collector", "state": "online", "ts": "2026-01-01T00:00:00Z"}))
                values.append(cpu_of(cmd, env))
                time.sleep(0.01)
            ms = statistics.median(values) * 1000
            floor = ms if floor is None else floor
            share = ms / 1000 * SERVICES / EVERY_S * 100
            rows.append((label, f"{ms:.0f} ms", f"{ms - floor:+.0f} ms", f"{share:.1f} %"))
    print(f"CPU per health check, median of {runs} runs; share of one core for {SERVICES} services every {EVERY_S:.0f} s\n")
    print(table(["variant", "CPU per check", "over the floor", "share of a core"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
