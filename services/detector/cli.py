"""``flowwatch thresholds recalibrate [--site S] [--meter M]``: learn the bands now from the store.

Stores them, publishes them retained (a running detector installs them), and prints them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from shared.cli import base_parser, settings_or_exit
from shared.store import StoreError, open_store


def main(argv: Sequence[str]) -> int:
    p = base_parser("thresholds", "Anomaly thresholds: 'recalibrate' learns the bands now from the stored readings.")
    p.add_argument("action", choices=["recalibrate"], help="what to do")
    p.add_argument("--site", default=None, help="only this site (default: every site with readings)")
    p.add_argument("--meter", default=None, help="only this meter (default: every meter with readings)")
    p.add_argument("--no-publish", action="store_true", help="store and print only; do not publish on MQTT")
    args = p.parse_args(argv)
    settings = settings_or_exit(args.config)

    from services.detector.engine import DetectionEngine
    from services.detector.thresholds import format_bands

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
            frame = store.read_readings(site, meter, at - timedelta(days=settings.detector.threshold_days), at)
            for th in engine.recalibrate(site, meter, frame, at):
                store.write_thresholds(th)
                results.append(th)
        if not args.no_publish:
            from shared.bus import Bus

            bus = Bus(settings.mqtt, "thresholds-cli", persistent=False)
            if not bus.connect(wait_s=10):
                print(f"flowwatch thresholds: stored, but the broker {settings.mqtt.host}:{settings.mqtt.port} is not "
                      "reachable, so nothing was published (a running detector picks them up at its next start)", file=sys.stderr)
                bus.close()
                bus = None
            else:
                for th in results:
                    bus.publish(bus.topics.thresholds(th.site, th.meter, th.signal), th, retain=True).wait_for_publish(5)
        for th in results:
            print(format_bands(th))
            print()
        return 0
    except StoreError as exc:
        print(f"flowwatch thresholds: {exc}", file=sys.stderr)
        return 2
    finally:
        if bus is not None:
            bus.close()
        store.close()
