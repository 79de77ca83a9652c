"""``flowwatch train``: train the forecasting models now.

By default it trains here, in this process (lowered priority, ``trainer.threads`` threads), shows a
log line per epoch, writes the versions and publishes the ``model`` messages. ``--request`` asks a
running trainer service to do it instead (an MQTT command), and returns at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from shared.messages import SIGNALS, Command
from shared.runner import base_parser, settings_from_args


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser("train", "Train the forecasting models now (one LSTM per meter and signal).")
    p.add_argument("--signal", choices=SIGNALS, default=None, help="train only this signal (default: every signal a meter has)")
    p.add_argument("--meter", action="append", default=None, help="train only this meter (repeatable; default: every configured meter)")
    p.add_argument("--request", action="store_true", help="ask the running trainer service over MQTT instead")
    p.add_argument("--no-publish", action="store_true", help="do not publish the model messages")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    signals = (args.signal,) if args.signal else SIGNALS

    from shared.service import setup_logging

    setup_logging(settings.log_level)
    meters = args.meter or settings.meter_ids
    if args.request:
        return max(_request(settings, args.signal, m) for m in meters)

    from services.trainer import training
    from shared.store import StoreError, open_store

    training.configure_runtime(settings)
    try:
        store = open_store(settings)
    except StoreError as exc:
        print(f"flowwatch train: {exc}", file=sys.stderr)
        return 2
    try:
        results = training.train_meters(settings, store, {m: signals for m in meters})
    except training.NotEnoughData as exc:
        print(f"flowwatch train: not enough data: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"flowwatch train: store error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"{'meter':<12} {'signal':<10} {'version':<20} {'promoted':<8} {'WAPE model':>10} {'persist.':>9} {'s.naive':>9}  reason")
    for r in results:
        m = r.metrics
        print(f"{r.meter:<12} {r.signal:<10} {r.version:<20} {'yes' if r.promoted else 'no':<8} {m.get('wape_model', float('nan')):>10.4f} "
              f"{m.get('wape_persistence', float('nan')):>9.4f} {m.get('wape_seasonal_naive', float('nan')):>9.4f}  {r.reason}")
    if not args.no_publish:
        _publish(settings, [r.to_dict() for r in results])
    return 0


def _bus(settings):
    from shared.bus import Bus

    return Bus(settings.mqtt, "trainer-cli", persistent=False)


def _publish(settings, results: list[dict]) -> None:
    from services.trainer.publish import publish_result

    bus = _bus(settings)
    if not bus.connect(wait_s=5):
        print("flowwatch train: broker not reachable; models are on disk, the forecaster picks them up at its next start",
              file=sys.stderr)
        bus.close()
        return
    try:
        for r in results:
            publish_result(bus, settings, r).wait_for_publish(timeout=5)
    finally:
        bus.close()


def _request(settings, signal: str | None, meter: str) -> int:
    bus = _bus(settings)
    if not bus.connect(wait_s=5):
        print(f"flowwatch train: cannot reach the broker at {settings.mqtt.host}:{settings.mqtt.port}", file=sys.stderr)
        bus.close()
        return 2
    try:
        cmd = Command(site=settings.site, meter=meter, action="train", requested_at=datetime.now(UTC), signal=signal)
        bus.publish(bus.topics.command(settings.site, meter), cmd, qos=1).wait_for_publish(timeout=5)
    finally:
        bus.close()
    print(f"training requested from the trainer service for {settings.site}/{meter}")
    return 0
