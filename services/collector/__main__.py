"""``flowwatch collector``: read the meter, publish readings on MQTT, never lose one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.collector.service import CollectorService
from shared.runner import run_service
from shared.settings import CONFIG_ENV, read_config_file

EPILOG = """\
examples:
  # a line-protocol meter on an RS485 USB adapter at 9600 baud, 8 data bits, no parity, 1 stop bit:
  FLOWWATCH_COLLECTOR__SOURCE=serial FLOWWATCH_COLLECTOR__SERIAL__PORT=/dev/ttyUSB0 flowwatch collector
  flowwatch collector --source serial --port /dev/ttyUSB0 --baudrate 9600      (8N1 is the default)

  # the same in the config file (collector.serial.frame says how a line is parsed):
  collector:
    source: serial
    serial: {port: /dev/ttyUSB0, baudrate: 9600, bytesize: 8, parity: N, stopbits: 1}

  # a Modbus RTU meter (register map: see docs/meters.md):
  flowwatch collector --source modbus-rtu --port /dev/ttyUSB0 --baudrate 9600 --unit-id 1

  # a simulated meter, a week in ~17 minutes:
  flowwatch collector --source simulator --speed 600

Units: flow rate m3/h, pressure bar. Full reference: docs/meters.md, docs/configuration.md.
"""


DESCRIPTION = (
    "Read the meter (serial line protocol, Modbus RTU/TCP, simulator or CSV replay) and publish readings on MQTT,"
    " spooling to disk while the broker is away."
)


def add_options(p: argparse.ArgumentParser) -> None:
    """The collector's own flags, each a shortcut for a ``collector.*`` setting."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--source", choices=["simulator", "serial", "modbus-rtu", "modbus-tcp", "replay"], help="collector.source")
    p.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0 (collector.serial.port, or collector.modbus.port for modbus-rtu)")
    p.add_argument("--baudrate", type=int, help="line speed (default 9600, with 8 data bits, no parity, 1 stop bit)")
    p.add_argument("--host", help="Modbus TCP meter or gateway address (collector.modbus.host)")
    p.add_argument("--unit-id", type=int, help="Modbus unit id (collector.modbus.unit_id)")
    p.add_argument("--interval", type=int, metavar="SECONDS", help="seconds between readings (collector.interval_s, default 60)")
    p.add_argument("--speed", type=float, help="event time speed-up for simulator/replay; 0 = as fast as possible")
    p.add_argument("--file", help="CSV to replay (collector.replay.file)")
    p.add_argument("--seed", type=int, help="simulator seed (collector.simulator.seed)")


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The ``collector`` section: the config file's, with the command-line flags on top."""
    path = args.config or os.environ.get(CONFIG_ENV)
    data = read_config_file(Path(path)) if path else {}
    col = dict(data.get("collector") or {})
    source = args.source or col.get("source", "simulator")
    col["source"] = source
    line = "modbus" if source == "modbus-rtu" else "serial"

    def put(section: str, key: str, value: object) -> None:
        col[section] = {**(col.get(section) or {}), key: value}

    if args.port:
        put(line, "port", args.port)
    if args.baudrate:
        put(line, "baudrate", args.baudrate)
    if args.host:
        put("modbus", "host", args.host)
    if args.unit_id is not None:
        put("modbus", "unit_id", args.unit_id)
    if args.file:
        put("replay", "file", args.file)
    if args.seed is not None:
        put("simulator", "seed", args.seed)
    if args.interval:
        col["interval_s"] = args.interval
    if args.speed is not None:
        col["speed"] = args.speed
    return {"collector": col}


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(CollectorService, argv, DESCRIPTION, options=add_options, overrides=overrides)


if __name__ == "__main__":
    sys.exit(main())
