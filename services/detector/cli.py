"""``flowwatch thresholds recalibrate [--site S] [--meter M]``: learn the bands (and the step
thresholds of burst / pressure_drop, to the alarm budget) now from the store.

Computes them from the store (so it works with no detector running), stores them and prints them,
then sends a ``recalibrate`` command per meter: a running detector recomputes the same bands from the
same readings, installs them and publishes them retained (the detector is the one MQTT user allowed
to write thresholds topics; the operator may send commands — mosquitto/acl).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from shared.runner import base_parser, settings_from_args
from shared.store import StoreError, open_store


def main(argv: Sequence[str]) -> int:
    p = base_parser("thresholds", "Anomaly thresholds: 'recalibrate' learns the bands now from the stored readings.")
    p.add_argument("action", choices=["recalibrate"], help="what to do")
    p.add_argument("--site", default=None, help="only this site (default: every site with readings)")
    p.add_argument("--meter", default=None, help="only this meter (default: every meter with readings)")
    p.add_argument("--no-publish", action="store_true", help="store and print only; send no command to a running detector")
    args = p.parse_args(argv)
    settings = settings_from_args(args)

    from services.detector.engine import DetectionEngine
    from services.detector.rules.steps import format_steps
    from services.detector.rules.thresholds import format_bands
    from services.detector.service import read_columns

    try:
        store = open_store(settings)
    except StoreError as exc:
        print(f"flowwatch thresholds: {exc}", file=sys.stderr)
        return 2
    bus = None
    try:
        meters = [(s, m) for s, m in store.meters() if (args.site in (None, s)) and (args.meter in (None, m))]
        if not meters:
            if args.site or args.meter:
                meters = [(args.site or settings.site, args.meter or settings.meter)]
            else:
                print("flowwatch thresholds: the store holds no readings yet; static limits apply "
                      "(detector.static_limits)", file=sys.stderr)
                return 1
        engine = DetectionEngine.from_settings(settings)
        results = []
        for site, meter in meters:
            last = store.last_reading_time(site, meter)
            at = last + timedelta(seconds=1) if last else datetime.now(UTC).replace(microsecond=0)
            recent = read_columns(store, site, meter, at - timedelta(days=settings.detector.threshold_days), at)
            for th in engine.recalibrate(site, meter, recent, at):
                store.write_thresholds(th)
                results.append(th)
        if not args.no_publish:
            from shared.bus import Bus
            from shared.messages import Command

            bus = Bus(settings.mqtt, "thresholds-cli", persistent=False)
            if not bus.connect(wait_s=10):
                print(f"flowwatch thresholds: stored, but the broker {settings.mqtt.host}:{settings.mqtt.port} is not reachable, "
                      "so a running detector was not told (it loads the stored bands at its next start)", file=sys.stderr)
                bus.close()
                bus = None
            else:
                now = datetime.now(UTC)
                for site, meter in meters:
                    cmd = Command(site=site, meter=meter, action="recalibrate", requested_at=now)
                    bus.publish(bus.topics.command(site, meter), cmd).wait_for_publish(5)
        for th in results:
            print(format_bands(th))
            print()
        for site, meter in meters:
            print(format_steps(site, meter, engine.calibration(site, meter)))
            print()
        return 0
    except StoreError as exc:
        print(f"flowwatch thresholds: {exc}", file=sys.stderr)
        return 2
    finally:
        if bus is not None:
            bus.close()
        store.close()
