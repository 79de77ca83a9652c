"""What the notifier decides, without I/O or a clock of its own: which transition an anomaly update
is, which channels a route gives it, whether it is silenced or held for quiet hours, and the text
people read. The service (service.py) feeds it and keeps the outbox (outbox.py).

Transitions of one alert (identity: :func:`shared.messages.alert_id`):

- ``open``: the first update seen of an open alert;
- ``escalate``: its severity rose, or it is critical, still open, not acknowledged, and
  ``notifier.escalate_after_minutes`` have passed since the last notification (``escalate1``,
  ``escalate2``, …: each one once);
- ``close``: it closed (a single-reading event published closed at once is one ``close``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from shared.messages import SEVERITY_RANK, AlertAction, Anomaly, alert_id
from shared.settings.notifier import NotifierSettings, QuietHours

# Dashboard panel (grafana/dashboards/flowwatch.json) a message links to, per signal.
PANEL_OF_SIGNAL = {"flow_rate": 7, "pressure": 8}
PANEL_ANOMALIES = 11


@dataclass
class Notification:
    """One message for one channel (what the outbox keeps and a channel sends)."""

    key: str  # idempotency key: alert id + transition + channel
    channel: str
    transition: str
    subject: str
    text: str
    data: dict = field(default_factory=dict)


def transition_of(a: Anomaly, known: dict | None) -> str | None:
    """The transition an anomaly update makes, given what is known of its alert (None: never seen;
    else ``{"state", "severity"}``); None when it changes nothing people are told about."""
    if known is None:
        return "open" if a.state == "open" else "close"
    if known["state"] == "closed":
        return None  # a redelivery or a late update of a closed alert
    if a.state == "closed":
        return "close"
    if SEVERITY_RANK[a.severity] > SEVERITY_RANK[known["severity"]]:
        return "escalate"
    return None


def route(cfg: NotifierSettings, a: Anomaly, transition: str) -> list[str]:
    """The channels of every route the alert matches (in configuration order, each once)."""
    if SEVERITY_RANK[a.severity] < SEVERITY_RANK[cfg.min_severity]:
        return []
    base = transition.rstrip("0123456789")
    out: list[str] = []
    for r in cfg.routes:
        if ((not r.severities or a.severity in r.severities) and (not r.kinds or a.kind in r.kinds)
                and (not r.sites or a.site in r.sites) and (not r.meters or a.meter in r.meters) and base in r.transitions):
            out.extend(c for c in r.channels if c not in out)
    return out


class Actions:
    """The acknowledgements and silences in force (fed from the store and the command topic)."""

    def __init__(self) -> None:
        self.acked: dict[str, AlertAction] = {}
        self.silences: dict[str, AlertAction] = {}  # action id -> silence

    def apply(self, a: AlertAction) -> None:
        if a.action == "ack" and a.alert_id:
            self.acked.setdefault(a.alert_id, a)
        elif a.action == "silence":
            self.silences[a.id] = a
        elif a.action == "unsilence":
            for sid, s in list(self.silences.items()):
                if s.site == a.site and s.meter == a.meter and s.kind == a.kind and s.ts <= a.ts:
                    del self.silences[sid]

    def silenced(self, site: str, meter: str, kind: str, now: datetime) -> AlertAction | None:
        """The silence that covers this meter and kind now, if any."""
        for s in list(self.silences.values()):  # a copy: the inbox worker may apply a command meanwhile
            if (s.until is not None and s.ts <= now < s.until and s.site == site
                    and (s.meter is None or s.meter == meter) and (s.kind is None or s.kind == kind)):
                return s
        return None

    def active_silences(self, now: datetime) -> list[AlertAction]:
        return sorted((s for s in list(self.silences.values()) if s.until is not None and s.ts <= now < s.until), key=lambda s: s.ts)


def _hm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def quiet_until(q: QuietHours | None, severity: str, now: datetime, tz: ZoneInfo) -> datetime | None:
    """When a notification of ``severity`` made at ``now`` may go out, if quiet hours hold it now
    (None: send at once). Critical is never held."""
    if q is None or severity not in q.hold:
        return None
    local = now.astimezone(tz)
    start, end = _hm(q.start), _hm(q.end)
    t = local.time()
    inside = (start <= t < end) if start <= end else (t >= start or t < end)
    if not inside:
        return None
    release = datetime.combine(local.date(), end, tzinfo=tz)
    if release <= local:
        release = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=tz)
    return release.astimezone(UTC)


def backoff_s(attempts: int, lo: float, hi: float) -> float:
    """Delay after the ``attempts``-th failed try: lo, 2 lo, 4 lo, … up to hi."""
    return min(hi, lo * 2 ** max(0, min(attempts - 1, 30)))


def dashboard_link(cfg: NotifierSettings, a: Anomaly) -> str:
    start = a.start - timedelta(hours=6)
    end = (a.end or a.ts) + timedelta(hours=1)
    q = {
        "var-site": a.site, "var-meter": a.meter,
        "from": int(start.timestamp() * 1000), "to": int(end.timestamp() * 1000),
        "viewPanel": PANEL_OF_SIGNAL.get(a.signal, PANEL_ANOMALIES),
    }
    return f"{cfg.grafana_url.rstrip('/')}/d/{cfg.dashboard_uid}/flowwatch?{urlencode(q)}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def compose(cfg: NotifierSettings, a: Anomaly, transition: str, channel: str, tz: ZoneInfo, *, note: str = "") -> Notification:
    """The message of one transition for one channel: meter, what happened, since when, value
    against its limit, and the dashboard link."""
    aid = alert_id(a.site, a.meter, a.kind, a.signal, a.start)
    base = transition.rstrip("0123456789")
    word = {"open": "OPEN", "escalate": "ESCALATED", "close": "CLOSED"}[base]
    since = a.start.astimezone(tz).isoformat(timespec="seconds")
    link = dashboard_link(cfg, a)
    subject = f"[flowwatch {a.severity.upper()}] {word}: {a.kind} on {a.site}/{a.meter}"
    lines = [
        f"Meter: {a.site}/{a.meter}",
        f"What: {a.kind} ({a.signal}), {a.severity}" + (f": {a.message}" if a.message else ""),
        f"Since: {since}",
    ]
    if a.end is not None:
        lines.append(f"Ended: {a.end.astimezone(tz).isoformat(timespec='seconds')}")
    lines.append(f"Value: {_num(a.value)} against limit {_num(a.threshold)}")
    if note:
        lines.append(note)
    lines += [f"Dashboard: {link}", f"Alert id: {aid} (acknowledge: flowwatch alerts ack {aid})"]
    data = {
        "key": f"{aid}:{transition}:{channel}", "transition": base, "alert_id": aid, "site": a.site, "meter": a.meter,
        "kind": a.kind, "signal": a.signal, "severity": a.severity, "state": a.state,
        "start": a.start.isoformat(), "end": a.end.isoformat() if a.end else None, "value": a.value,
        "threshold": a.threshold, "message": a.message, "link": link,
    }
    return Notification(f"{aid}:{transition}:{channel}", channel, transition, subject, "\n".join(lines), data)


def compose_summary(cfg: NotifierSettings, site: str, meter: str, kind: str, channel: str, window: datetime,
                    count: int, tz: ZoneInfo) -> Notification:
    """The one message that stands for ``count`` notifications held back by the flapping limit."""
    start = window.astimezone(tz).isoformat(timespec="minutes")
    key = f"summary:{site}:{meter}:{kind}:{channel}:{int(window.timestamp())}"
    text = (f"Meter: {site}/{meter}\nWhat: {kind} is flapping: {count} more notification(s) held back since {start} "
            f"(notifier.flap_max={cfg.flap_max} per {cfg.flap_window_minutes:g} min)\n"
            f"Dashboard: {cfg.grafana_url.rstrip('/')}/d/{cfg.dashboard_uid}/flowwatch?"
            + urlencode({"var-site": site, "var-meter": meter, "viewPanel": PANEL_ANOMALIES}))
    data = {"key": key, "transition": "summary", "site": site, "meter": meter, "kind": kind, "count": count, "since": window.isoformat()}
    return Notification(key, channel, "summary", f"[flowwatch] {kind} flapping on {site}/{meter}: {count} held back", text, data)
