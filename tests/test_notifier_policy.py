"""The notifier's pure decisions (services/notifier/policy.py) and its outbox file (a real SQLite file)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from services.notifier.outbox import Outbox
from services.notifier.policy import Actions, backoff_s, compose, compose_summary, quiet_until, route, transition_of
from shared.messages import AlertAction, Anomaly, alert_id
from shared.settings import Settings
from shared.settings.notifier import NotifierSettings, QuietHours

SEOUL = ZoneInfo("Asia/Seoul")
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 10:00 in Seoul


def anomaly(**kw) -> Anomaly:
    base = dict(site="s1", meter="m1", kind="pressure_loss", signal="pressure", severity="critical", state="open",
                start=T0, ts=T0, value=0.5, threshold=0.7, message="pressure 0.500 bar below 0.7 bar")
    return Anomaly(**{**base, **kw})


def cfg(**kw) -> NotifierSettings:
    base = {"channels": {"mail": {"type": "email", "host": "smtp", "sender": "a@b.c", "to": ["ops@b.c"]},
                         "hook": {"type": "webhook", "url": "http://x/"},
                         "chat": {"type": "apprise", "urls_file": "/run/notifier-secrets/apprise"}},
            "routes": [{"channels": ["mail"], "severities": ["critical"]},
                       {"channels": ["hook", "mail"], "kinds": ["night_flow"], "meters": ["m1"]},
                       {"channels": ["chat"], "sites": ["s2"], "transitions": ["open"]}]}
    return NotifierSettings(**{**base, **kw})


def test_transitions() -> None:
    a = anomaly()
    assert transition_of(a, None) == "open"
    assert transition_of(a, {"state": "open", "severity": "critical"}) is None  # a redelivery, or an update
    assert transition_of(anomaly(severity="warning"), None) == "open"
    assert transition_of(a, {"state": "open", "severity": "warning"}) == "escalate"  # severity rose
    closed = anomaly(state="closed", end=T0 + timedelta(minutes=5))
    assert transition_of(closed, {"state": "open", "severity": "critical"}) == "close"
    assert transition_of(closed, {"state": "closed", "severity": "critical"}) is None
    assert transition_of(closed, None) == "close"  # a single-reading event, published closed at once


def test_routing_by_severity_kind_site_meter_and_transition() -> None:
    c = cfg()
    assert route(c, anomaly(), "open") == ["mail"]
    assert route(c, anomaly(kind="night_flow", severity="warning"), "open") == ["hook", "mail"]
    assert route(c, anomaly(kind="night_flow", severity="warning", meter="m2"), "open") == []
    assert route(c, anomaly(kind="night_flow", severity="warning", site="s2", meter="m2"), "open") == ["chat"]
    assert route(c, anomaly(kind="night_flow", severity="warning", site="s2", meter="m2"), "close") == []  # chat: opens only
    assert route(c, anomaly(kind="spike", severity="info", site="s2"), "open") == []  # below min_severity
    assert route(c, anomaly(), "escalate3") == ["mail"]


def test_settings_refuse_an_unknown_channel_and_a_password_in_yaml() -> None:
    with pytest.raises(ValidationError, match="unknown channel 'sms'"):
        cfg(routes=[{"channels": ["sms"]}])
    with pytest.raises(ValidationError, match="password_file"):
        NotifierSettings(channels={"m": {"type": "email", "host": "h", "sender": "a@b.c", "to": ["x@y.z"], "username": "u"}})
    with pytest.raises(ValidationError, match="extra|password"):
        NotifierSettings(channels={"m": {"type": "email", "host": "h", "sender": "a@b.c", "to": ["x@y.z"], "password": "p"}})
    with pytest.raises(ValidationError, match="HH:MM"):
        QuietHours(start="25:00")
    assert Settings(notifier=cfg().model_dump()).notifier.routes[0].channels == ["mail"]


def test_quiet_hours_hold_warnings_until_morning_never_critical() -> None:
    q = QuietHours(start="22:00", end="07:00")
    night = datetime(2026, 3, 2, 23, 30, tzinfo=SEOUL)
    assert quiet_until(q, "critical", night, SEOUL) is None
    assert quiet_until(q, "warning", night, SEOUL) == datetime(2026, 3, 3, 7, 0, tzinfo=SEOUL)
    assert quiet_until(q, "warning", datetime(2026, 3, 3, 3, 0, tzinfo=SEOUL), SEOUL) == datetime(2026, 3, 3, 7, 0, tzinfo=SEOUL)
    assert quiet_until(q, "warning", datetime(2026, 3, 3, 7, 0, tzinfo=SEOUL), SEOUL) is None
    assert quiet_until(q, "warning", datetime(2026, 3, 3, 12, 0, tzinfo=SEOUL), SEOUL) is None
    day = QuietHours(start="12:00", end="13:00")  # a window that does not cross midnight
    assert quiet_until(day, "warning", datetime(2026, 3, 3, 12, 30, tzinfo=SEOUL), SEOUL) == datetime(2026, 3, 3, 13, 0, tzinfo=SEOUL)
    assert quiet_until(None, "warning", night, SEOUL) is None


def test_backoff_doubles_up_to_the_limit() -> None:
    assert [backoff_s(n, 30, 900) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]


def test_silences_and_acks() -> None:
    act = Actions()
    now = T0
    aid = alert_id("s1", "m1", "pressure_loss", "pressure", T0)
    act.apply(AlertAction(id="1", action="ack", ts=now, alert_id=aid))
    assert aid in act.acked
    act.apply(AlertAction(id="2", action="silence", ts=now, site="s1", meter="m1", until=now + timedelta(hours=1)))
    act.apply(AlertAction(id="3", action="silence", ts=now, site="s1", kind="night_flow", until=now + timedelta(hours=2)))
    assert act.silenced("s1", "m1", "burst", now + timedelta(minutes=5)) is not None
    assert act.silenced("s1", "m1", "burst", now + timedelta(hours=1)) is None  # it ended
    assert act.silenced("s1", "m9", "night_flow", now + timedelta(minutes=90)) is not None  # a kind on every meter
    assert act.silenced("s2", "m1", "burst", now) is None
    act.apply(AlertAction(id="4", action="unsilence", ts=now + timedelta(minutes=1), site="s1", meter="m1"))
    assert act.silenced("s1", "m1", "burst", now + timedelta(minutes=5)) is None
    with pytest.raises(ValidationError, match="until"):
        AlertAction(id="5", action="silence", ts=now, site="s1", meter="m1")
    with pytest.raises(ValidationError, match="alert_id"):
        AlertAction(id="6", action="ack", ts=now)


def test_message_names_meter_what_since_value_limit_and_link() -> None:
    c = cfg(grafana_url="https://grafana.example.org/")
    n = compose(c, anomaly(), "open", "mail", SEOUL)
    assert n.key == f"{alert_id('s1', 'm1', 'pressure_loss', 'pressure', T0)}:open:mail"
    assert "s1/m1" in n.subject and "CRITICAL" in n.subject and "OPEN" in n.subject
    assert "Since: 2026-03-02T10:00:00+09:00" in n.text
    assert "Value: 0.500 against limit 0.700" in n.text
    assert "https://grafana.example.org/d/flowwatch-overview/flowwatch?var-site=s1&var-meter=m1" in n.text
    assert "viewPanel=8" in n.text  # the pressure panel
    assert n.data["alert_id"] in n.text and n.data["link"].startswith("https://grafana.example.org/d/")
    s = compose_summary(c, "s1", "m1", "night_flow", "mail", T0, 3, SEOUL)
    assert "3 held back" in s.subject and s.key.startswith("summary:")


def test_outbox_enqueues_each_key_once_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    c = cfg()
    a = anomaly()
    aid = alert_id(a.site, a.meter, a.kind, a.signal, a.start)
    fields = (a.site, a.meter, a.kind, a.signal, a.severity, a.state)
    n = compose(c, a, "open", "mail", SEOUL)
    now = T0.timestamp()
    assert ob.record(aid, a.model_dump_json(), fields, [(n, now, "critical")], notified_at=now) == 1
    assert ob.record(aid, a.model_dump_json(), fields, [(n, now, "critical")], notified_at=now) == 0  # redelivered
    ob.close()
    ob = Outbox(path)  # a restart
    assert ob.alert(aid)["state"] == "open"
    assert [r.key for r in ob.due(now)] == [n.key]
    ob.retry_later(n.key, now + 30, "connection refused")
    assert ob.due(now + 29) == [] and [r.attempts for r in ob.due(now + 30)] == [1]
    ob.mark(n.key, "sent", now + 31)
    assert ob.due(now + 10_000) == [] and ob.counts() == {"sent": 1}
    # flapping: held-back notifications are counted into one summary row
    s = compose_summary(c, "s1", "m1", "night_flow", "mail", T0, 1, SEOUL)
    assert ob.hold_back(s, now + 3600, now) == 1
    assert ob.hold_back(s, now + 3600, now) == 2
    assert ob.due(now + 3599) == []
    (row,) = ob.due(now + 3600)
    assert row.data["count"] == 2 and "2 held back" in row.subject and "2 more" in row.body
    # purge: finished rows go, pending ones stay
    assert ob.purge(now + 1) == 1 and ob.counts() == {"pending": 1}
    ob.close()


def test_the_operating_guide_example_is_a_valid_config() -> None:
    import re

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "operating.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("notifier:"))
    s = Settings(**yaml.safe_load(block))
    assert set(s.notifier.channels) == {"ops-mail", "ticketing", "on-call"} and len(s.notifier.routes) == 3
    assert s.notifier.quiet_hours is not None
