"""``flowwatch``: the one command line. Runs any service, the whole stack, and the tools.

    flowwatch up [--speed N]             the whole stack on this machine, no Docker
    flowwatch install [--prefix DIR]     systemd units for the broker and the services (docs/install.md)
    flowwatch collector|detector|...     one service
    flowwatch config check [FILE]        validate a config file, print the effective config
    flowwatch import FILE.csv            bulk-load historical readings
    flowwatch health SERVICE             exit 0 if the service's heartbeat is fresh (Docker healthcheck)

Each command lives in its own module with a ``main(argv) -> int``; this file only dispatches.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module:function, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("app.up:main", "run the whole stack on this machine (no Docker), simulated meter by default"),
    "install": ("app.install:main", "write systemd units for the broker and the services (Debian, no Docker)"),
    "collector": ("services.collector.__main__:main", "run the collector service (meter -> MQTT)"),
    "detector": ("services.detector.__main__:main", "run the detector service (store readings, raise anomalies)"),
    "forecaster": ("services.forecaster.__main__:main", "run the forecaster service (hourly forecast)"),
    "exporter": ("services.exporter.__main__:main", "run the exporter service (alert.txt / server.txt / forecast.txt)"),
    "trainer": ("services.trainer.__main__:main", "run the trainer service (retrains the models)"),
    "recorder": ("services.recorder.__main__:main", "run the central tier's recorder (store what the sites send)"),
    "central": ("app.central:main", "central init: the central broker's CA, site users and ACL"),
    "notifier": ("services.notifier.__main__:main", "run the notifier service (alerts to e-mail, webhook, apprise)"),
    "config": ("app.config_cmd:main", "config check [FILE]: validate a config file"),
    "import": ("app.import_csv:main", "bulk-load historical readings from a CSV file"),
    "health": ("app.health:main", "health check of one service (exit 0 when healthy)"),
    "secrets": ("app.credentials:main", "secrets init: generate MQTT passwords, Mosquitto password file, InfluxDB token"),
    "alerts": ("app.alerts:main", "alerts list|ack|silence|unsilence: open alerts, acknowledgements, silences"),
    "train": ("services.trainer.cli:main", "train the forecasting models now"),
    "thresholds": ("services.detector.cli:main", "thresholds recalibrate: recompute anomaly thresholds now"),
    "plot": ("app.plot:main", "plot flow, pressure, forecasts, thresholds and anomalies to a PNG"),
    "simulate": ("app.simulate:main", "generate leak scenarios with a hydraulic simulator"),
    "evaluate": ("app.evaluate:main", "score detection and forecasts on a readings file"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: flowwatch COMMAND [options]   (flowwatch COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {n:<{width}}  {h}" for n, (_, h) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"flowwatch {version('flowwatch')}")
        except PackageNotFoundError:
            print("flowwatch (not installed)")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"flowwatch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            print(f"flowwatch: '{name}' is not available in this build ({module_name} missing)", file=sys.stderr)
            return 2
        print(
            f"flowwatch {name}: a dependency is missing ({exc.name}); install the extra: pip install 'flowwatch[all]'",
            file=sys.stderr,
        )
        return 2
    return int(getattr(module, func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
