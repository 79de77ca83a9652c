"""``flowwatch simulate``: generate a leak scenario with a hydraulic simulator (EPANET via wntr).

    flowwatch simulate --out DIR [--days 28] [--seed 1] [--burst DAY:SIZE[:HOURS]]...
                       [--leak DAY:SIZE:GROWTH_DAYS[:DAYS]]... [--fault DAY:KIND[:MINUTES[:SIGNAL]]]...
    flowwatch simulate --out DIR --scenario bench/scenarios.yaml:NAME

Writes ``DIR/readings.csv`` (timestamp,flow_rate,pressure; ISO 8601 UTC, m³/h, bar) and
``DIR/labels.csv`` (start,end,kind,size_pct; kind = burst | leak | sensor_fault). DAY counts from
the scenario start (local midnight), fractions allowed (10.5 = noon of day 10). The same options
and seed give the same files. See app/scenarios.py for the model.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from app.scenarios import Leak, Scenario, SensorFault, scenario_from_dict, simulate, write
from shared.runner import base_parser


def _floats(text: str, opt: str, n_min: int, n_max: int) -> list[str]:
    parts = text.split(":")
    if not n_min <= len(parts) <= n_max:
        raise ValueError(f"{opt} {text!r}: expected {n_min}..{n_max} fields separated by ':'")
    return parts


def parse_burst(text: str) -> Leak:
    p = _floats(text, "--burst", 2, 3)
    return Leak(start_day=float(p[0]), size_pct=float(p[1]), kind="burst", duration_days=float(p[2]) / 24 if len(p) > 2 else None)


def parse_leak(text: str) -> Leak:
    p = _floats(text, "--leak", 3, 4)
    return Leak(start_day=float(p[0]), size_pct=float(p[1]), kind="leak", growth_days=float(p[2]), duration_days=float(p[3]) if len(p) > 3 else None)


def parse_fault(text: str) -> SensorFault:
    p = _floats(text, "--fault", 2, 4)
    if p[1] not in ("flatline", "spike", "gap"):
        raise ValueError(f"--fault {text!r}: KIND must be flatline, spike or gap")
    signal = p[3] if len(p) > 3 else "both"
    if signal not in ("flow_rate", "pressure", "both"):
        raise ValueError(f"--fault {text!r}: SIGNAL must be flow_rate, pressure or both")
    return SensorFault(start_day=float(p[0]), kind=p[1], minutes=float(p[2]) if len(p) > 2 else 60.0, signal=signal)  # type: ignore[arg-type]


def load_scenario(spec: str) -> Scenario:
    """``FILE.yaml:NAME`` -> that scenario of the suite file (a list under ``scenarios:``)."""
    import yaml

    path, _, name = spec.rpartition(":") if ":" in spec else (spec, "", "")
    data = yaml.safe_load(Path(path).read_text())
    items = data.get("scenarios", []) if isinstance(data, dict) else []
    names = [s.get("name") for s in items]
    if not name:
        if len(items) != 1:
            raise ValueError(f"{path} holds {len(items)} scenarios; name one as {path}:NAME ({', '.join(map(str, names))})")
        return scenario_from_dict(items[0])
    for s in items:
        if s.get("name") == name:
            return scenario_from_dict(s)
    raise ValueError(f"no scenario {name!r} in {path}; known: {', '.join(map(str, names))}")


def main(argv: Sequence[str]) -> int:
    p = base_parser("simulate", "Generate readings.csv + labels.csv of a DMA with leaks and sensor faults (EPANET via wntr).")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--scenario", default=None, metavar="FILE.yaml[:NAME]", help="take the scenario from a suite file (options below override)")
    p.add_argument("--days", type=float, default=None, help="length in days (default 28)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--start", default=None, help="first day, local date YYYY-MM-DD (default 2026-01-05)")
    p.add_argument("--timezone", default=None, help="local zone of the demand pattern (default Asia/Seoul)")
    p.add_argument("--mean-inflow", type=float, default=None, help="mean inflow without leaks, m³/h (default 40)")
    p.add_argument("--step", type=int, default=None, help="hydraulic step in minutes (default 15)")
    p.add_argument("--burst", action="append", default=[], metavar="DAY:SIZE[:HOURS]", help="abrupt leak of SIZE %% of mean inflow, repaired after HOURS")
    p.add_argument("--leak", action="append", default=[], metavar="DAY:SIZE:GROWTH_DAYS[:DAYS]", help="incipient leak growing to SIZE %% over GROWTH_DAYS")
    p.add_argument("--fault", action="append", default=[], metavar="DAY:KIND[:MINUTES[:SIGNAL]]", help="sensor fault: flatline, spike or gap")
    args = p.parse_args(argv)
    try:
        sc = load_scenario(args.scenario) if args.scenario else Scenario()
        over = {k: v for k, v in (("days", args.days), ("seed", args.seed), ("start", args.start), ("timezone", args.timezone),
                                  ("mean_inflow", args.mean_inflow), ("hydraulic_step_min", args.step)) if v is not None}
        leaks = tuple(parse_burst(b) for b in args.burst) + tuple(parse_leak(x) for x in args.leak)
        faults = tuple(parse_fault(f) for f in args.fault)
        if leaks:
            over["leaks"] = sc.leaks + leaks
        if faults:
            over["faults"] = sc.faults + faults
        sc = replace(sc, **over)
    except (OSError, ValueError, TypeError) as exc:
        print(f"flowwatch simulate: {exc}", file=sys.stderr)
        return 2
    t = time.perf_counter()
    sim = simulate(sc)
    rp, lp = write(sim, args.out)
    i = sim.info
    print(f"{sc.name}: {len(sim.readings):,} readings over {sc.days:g} days, {len(sim.labels)} labels; "
          f"mean inflow {i['mean_inflow_m3h']:.1f} m³/h, mean pressure {i['mean_pressure_bar']:.2f} bar; {time.perf_counter() - t:.1f} s")
    print(f"wrote {rp} and {lp}")
    return 0
