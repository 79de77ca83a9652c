"""``flowwatch alerts list|ack|silence|unsilence``: see the open alerts, acknowledge one, silence a meter.

Acknowledgements and silences are written to the store (``alert_actions``), where the notifier
reads them (within ``notifier.command_poll_s``), Grafana shows them and the exporter's alert.txt
marks them. A device may send the same as JSON on the notifier's command topic
(``<prefix>/notifier/command``, docs/operating.md).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.messages import AlertAction, alert_id
from shared.runner import base_parser, parse_duration, settings_from_args
from shared.store import StoreError, open_store

LIST_DAYS = 30


def recent_alerts(store, settings, days: int = LIST_DAYS) -> list[tuple[str, object]]:  # noqa: ANN001
    """(alert id, anomaly) of every alert that started in the ``days`` before each meter's last
    reading (event time: an imported or replayed history counts as recent)."""
    out = []
    keys = set(store.meters()) | {(settings.site, m) for m in settings.meter_ids}
    for site, meter in sorted(keys):
        end = (store.last_reading_time(site, meter) or datetime.now(UTC)) + timedelta(days=1)
        for a in store.read_anomaly_records(site, meter, end - timedelta(days=days + 1), end):
            out.append((alert_id(a.site, a.meter, a.kind, a.signal, a.start), a))
    return out


def open_alerts(store, settings, days: int = LIST_DAYS) -> list[tuple[str, object]]:  # noqa: ANN001
    """(alert id, anomaly) of the recent alerts whose latest update is open."""
    return [(aid, a) for aid, a in recent_alerts(store, settings, days) if a.state == "open"]


def known_alert(store, settings, aid: str, days: int = LIST_DAYS):  # noqa: ANN001, ANN201
    return next((a for i, a in recent_alerts(store, settings, days) if i == aid), None)


def main(argv: Sequence[str]) -> int:
    p = base_parser("alerts", "Open alerts, acknowledgements and silences (docs/operating.md, 'Alert routing').")
    # --config / --data-dir also after the action (flowwatch alerts ack ID -c FILE)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    common.add_argument("--data-dir", metavar="DIR", type=Path, default=argparse.SUPPRESS, help="data folder")
    sub = p.add_subparsers(dest="action", required=True)
    lst = sub.add_parser("list", parents=[common], help="open alerts (with their ids) and the silences in force")
    lst.add_argument("--outbox", action="store_true", help="also the notifications not sent yet (the notifier's outbox)")
    ack = sub.add_parser("ack", parents=[common], help="acknowledge an alert: it is not escalated any more")
    ack.add_argument("alert_id", help="the id shown by 'flowwatch alerts list' and in every notification")
    sil = sub.add_parser("silence", parents=[common], help="send nothing for a meter (or one kind) until the silence ends")
    uns = sub.add_parser("unsilence", parents=[common], help="end the silences of a meter (or kind) now")
    for sp in (sil, uns):
        sp.add_argument("--site", default=None, help="site (default: the configured site)")
        sp.add_argument("--meter", default=None, help="meter (default: every meter of the site, with --kind)")
        sp.add_argument("--kind", default=None, help="only this anomaly kind, e.g. night_flow")
    sil.add_argument("--for", dest="duration", default=None, help="how long, e.g. 30m, 2h, 1d")
    sil.add_argument("--until", default=None, help="until this time (ISO 8601 with a zone, e.g. 2026-03-02T07:00+09:00)")
    for sp in (ack, sil, uns):
        sp.add_argument("--by", default="", help="who (shown in Grafana and the notifier's log)")
        sp.add_argument("--note", default="", help="why")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    try:
        store = open_store(settings)
    except StoreError as exc:
        print(f"flowwatch alerts: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, settings, store)
    except StoreError as exc:
        print(f"flowwatch alerts: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _print_outbox(settings) -> None:  # noqa: ANN001
    from services.notifier.outbox import Outbox

    path = settings.path(settings.notifier.outbox)
    if not path.exists():
        print(f"outbox {path}: none yet (the notifier has not run here)")
        return
    ob = Outbox(path)
    try:
        rows = [r for r in ob.rows() if r["state"] == "pending"]
    finally:
        ob.close()
    print(f"outbox {path}: {len(rows)} notification(s) not sent yet")
    for r in rows:
        due = datetime.fromtimestamp(r["due"], UTC).astimezone(settings.tz).isoformat(timespec="seconds")
        err = f", last error: {r['last_error']}" if r["last_error"] else ""
        print(f"  {r['key']}  next try {due}, {r['attempts']} failed{err}")


def _run(args, settings, store) -> int:  # noqa: ANN001
    now = datetime.now(UTC)  # microseconds kept: a silence and its unsilence in one second stay in order
    if args.action == "list":
        from services.notifier.service import ACTIONS_LOOKBACK

        actions = store.read_alert_actions(now - ACTIONS_LOOKBACK)
        # the latest ack of each alert is shown (Actions below keeps the first; it is used for the silences)
        acked = {a.alert_id: a for a in actions if a.action == "ack"}
        rows = open_alerts(store, settings)
        if not rows:
            print("no open alerts")
        for aid, a in rows:
            ack = acked.get(aid)
            mark = f"  acknowledged by {ack.by or '?'} at {ack.ts.isoformat()}" if ack else ""
            print(f"{aid}  {a.severity:<8} {a.site}/{a.meter} {a.kind} ({a.signal}) since {a.start.astimezone(settings.tz).isoformat()}{mark}")
        from services.notifier.policy import Actions

        state = Actions()
        for a in actions:
            state.apply(a)
        for s in state.active_silences(now):
            print(f"silenced: {s.site}/{s.meter or '*'} kind {s.kind or '*'} until {s.until.astimezone(settings.tz).isoformat()}"
                  f"{f' by {s.by}' if s.by else ''}{f' ({s.note})' if s.note else ''}")
        if args.outbox:
            _print_outbox(settings)
        return 0
    common = {"id": uuid.uuid4().hex, "ts": now, "by": args.by, "note": args.note}
    try:
        if args.action == "ack":
            if known_alert(store, settings, args.alert_id) is None:
                print(f"flowwatch alerts: no alert {args.alert_id!r} in the {LIST_DAYS} days before the last reading (see 'flowwatch alerts list')", file=sys.stderr)
                return 2
            action = AlertAction(action="ack", alert_id=args.alert_id, **common)
        else:
            site = args.site or settings.site
            if args.meter is None and args.kind is None:
                print(f"flowwatch alerts {args.action}: give --meter, --kind or both", file=sys.stderr)
                return 2
            until = None
            if args.action == "silence":
                if (args.duration is None) == (args.until is None):
                    print("flowwatch alerts silence: give either --for (e.g. 2h) or --until", file=sys.stderr)
                    return 2
                until = now + parse_duration(args.duration, "--for") if args.duration else datetime.fromisoformat(args.until)
                if until.tzinfo is None:
                    print("flowwatch alerts silence: --until needs a zone (e.g. +09:00 or Z)", file=sys.stderr)
                    return 2
            action = AlertAction(action=args.action, site=site, meter=args.meter, kind=args.kind, until=until, **common)
    except ValueError as exc:
        print(f"flowwatch alerts: {exc}", file=sys.stderr)
        return 2
    store.write_alert_actions([action])
    what = action.alert_id if action.action == "ack" else f"{action.site}/{action.meter or '*'} kind {action.kind or '*'}"
    tail = f" until {action.until.astimezone(settings.tz).isoformat()}" if action.until else ""
    print(f"{action.action}: {what}{tail} (stored; the notifier applies it within {settings.notifier.command_poll_s:g} s)")
    return 0
