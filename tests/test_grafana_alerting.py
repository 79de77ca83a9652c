"""The provisioned Grafana alert rules (grafana/provisioning/alerting/flowwatch.yaml).

1. The file has the shape Grafana's file provisioning documents (groups of rules with uid, title,
   condition, data, for, noDataState, execErrState; contact points with receivers; policies naming
   a contact point), and every rule's condition and expressions refer to refIds it has.
2. Each rule's InfluxQL queries run on a real InfluxDB (written through the real InfluxStore) and,
   evaluated the way Grafana's expression nodes do (reduce, math, threshold, per series), give the
   state they should: firing with the condition present, normal without.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml

from shared.messages import Anomaly, Reading
from shared.store.base import NightFlow
from tests.harness import wait_for

FILE = Path(__file__).resolve().parents[1] / "grafana" / "provisioning" / "alerting" / "flowwatch.yaml"
DATASOURCE_UID = "flowwatch-influxql"  # grafana/provisioning/datasources/flowwatch.yaml
DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "dashboards" / "flowwatch.json"
DURATION = re.compile(r"^\d+[smhd]$")


def rules() -> dict[str, dict]:
    doc = yaml.safe_load(FILE.read_text())
    return {r["uid"]: r for g in doc["groups"] for r in g["rules"]}


# --- 1. the documented format ------------------------------------------------------------------
def test_provisioning_file_has_the_documented_shape() -> None:
    import json

    doc = yaml.safe_load(FILE.read_text())
    assert doc["apiVersion"] == 1
    assert set(doc) <= {"apiVersion", "groups", "deleteRules", "contactPoints", "deleteContactPoints", "policies",
                        "resetPolicies", "templates", "deleteTemplates", "muteTimes", "deleteMuteTimes"}
    panels = {p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    uids = set()
    for g in doc["groups"]:
        assert isinstance(g["orgId"], int) and g["name"] and g["folder"] and DURATION.match(g["interval"])
        for r in g["rules"]:
            for key in ("uid", "title", "condition", "data", "for"):
                assert r.get(key) not in (None, ""), (r.get("uid"), key)
            assert r["uid"] not in uids and len(r["uid"]) <= 40
            uids.add(r["uid"])
            assert DURATION.match(r["for"])
            assert r.get("noDataState", "NoData") in ("NoData", "Alerting", "OK")
            assert r.get("execErrState", "Alerting") in ("Error", "Alerting", "OK")
            refs = [d["refId"] for d in r["data"]]
            assert len(set(refs)) == len(refs) and r["condition"] in refs
            for d in r["data"]:
                assert d["model"]["refId"] == d["refId"]
                if d["datasourceUid"] == "__expr__":
                    m = d["model"]
                    assert m["type"] in ("math", "reduce", "resample", "classic_conditions", "threshold")
                    for ref in re.findall(r"\$([A-Z])", m["expression"]) if m["type"] == "math" else [m["expression"]]:
                        assert ref in refs and ref != d["refId"]
                else:
                    assert d["datasourceUid"] == DATASOURCE_UID
                    assert d["relativeTimeRange"]["from"] > d["relativeTimeRange"]["to"] >= 0
                    assert d["model"]["rawQuery"] is True and "$timeFilter" in d["model"]["query"]
            if "panelId" in r:
                assert r["dashboardUid"] == "flowwatch-overview" and r["panelId"] in panels
    assert uids == {"flowwatch-open-critical", "flowwatch-meter-silent", "flowwatch-service-offline", "flowwatch-night-flow-rise"}
    cps = {c["name"]: c for c in doc["contactPoints"]}
    assert len(cps) == 1
    for c in cps.values():
        assert isinstance(c["orgId"], int)
        for rcv in c["receivers"]:
            assert rcv["uid"] and rcv["type"] == "email" and rcv["settings"]["addresses"] == "${FLOWWATCH_ALERT_EMAIL}"
    for p in doc["policies"]:
        assert p["receiver"] in cps and all(DURATION.match(p[k]) for k in ("group_wait", "group_interval", "repeat_interval"))


# --- 2. the queries on a real InfluxDB ---------------------------------------------------------
def run_query(url: str, db: str, q: str, rng: dict) -> dict[tuple, list]:
    """Grafana's InfluxQL query with $timeFilter for the rule's relative range: {tags: [values]}."""
    tf = f"time >= now() - {rng['from']}s AND time <= now() - {rng['to']}s"
    resp = requests.get(f"{url}/query", params={"db": db, "q": q.replace("$timeFilter", tf), "epoch": "s"}, timeout=10)
    resp.raise_for_status()
    out: dict[tuple, list] = {}
    for res in resp.json()["results"]:
        assert "error" not in res, res
        for s in res.get("series", []):
            out[tuple(sorted((s.get("tags") or {}).items()))] = [v[1] for v in s["values"]]
    return out


def evaluate(rule: dict, url: str, db: str) -> str:
    """'firing', 'normal' or the noData state: Grafana's evaluation of one rule, series by series."""
    frames: dict[str, dict[tuple, object]] = {}
    for d in rule["data"]:
        m = d["model"]
        if d["datasourceUid"] != "__expr__":
            frames[d["refId"]] = run_query(url, db, m["query"], d["relativeTimeRange"])
        elif m["type"] == "reduce":
            fn = {"last": lambda v: v[-1], "mean": lambda v: sum(v) / len(v), "max": max, "min": min}[m["reducer"]]
            frames[d["refId"]] = {k: fn([x for x in v if x is not None]) for k, v in frames[m["expression"]].items() if v}
        elif m["type"] == "threshold":
            ev = m["conditions"][0]["evaluator"]
            kind, limit = ev["type"], ev["params"][0]
            assert kind in ("gt", "lt"), kind
            frames[d["refId"]] = {k: float(v > limit if kind == "gt" else v < limit) for k, v in frames[m["expression"]].items()}
        elif m["type"] == "math":
            refs = re.findall(r"\$([A-Z])", m["expression"])
            keys = set.intersection(*(set(frames[r]) for r in refs))  # series matched by their labels
            frames[d["refId"]] = {k: float(eval(re.sub(r"\$([A-Z])", lambda x, k=k: repr(frames[x.group(1)][k]), m["expression"])))  # noqa: S307
                                  for k in keys}
    result = frames[rule["condition"]]
    if not result:
        return {"OK": "normal", "Alerting": "firing"}.get(rule.get("noDataState", "NoData"), "nodata")
    return "firing" if any(v for v in result.values()) else "normal"


@pytest.fixture
def influx(influxd):
    from shared.store.influx import InfluxStore

    db = f"g_{uuid.uuid4().hex[:12]}"
    s = InfluxStore(influxd.settings(database=db))
    yield s, influxd.url, db
    s.close()


def now_s() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def test_open_critical_anomaly_rule(influx) -> None:
    store, url, db = influx
    rule = rules()["flowwatch-open-critical"]
    assert evaluate(rule, url, db) == "normal"  # nothing stored: no data, OK
    start = now_s() - timedelta(hours=2)
    crit = Anomaly(site="s1", meter="m1", kind="pressure_loss", signal="pressure", severity="critical", state="open",
                   start=start, ts=start, value=0.5, threshold=0.7)
    warn = Anomaly(site="s1", meter="m2", kind="night_flow", signal="flow_rate", severity="warning", state="open", start=start, ts=start)
    store.write_anomalies([warn])
    assert evaluate(rule, url, db) == "normal"  # an open warning is not critical
    store.write_anomalies([crit])
    assert evaluate(rule, url, db) == "firing"
    store.write_anomalies([crit.model_copy(update={"state": "closed", "end": start + timedelta(minutes=5)})])
    assert evaluate(rule, url, db) == "normal"  # the same anomaly closed (an update overwrites its point)


def test_meter_silent_rule(influx) -> None:
    store, url, db = influx
    rule = rules()["flowwatch-meter-silent"]
    # The rule looks at the current 10-minute bucket; not in its first seconds (Grafana's `for: 5m` covers them)
    wait_for(lambda: time.time() % 600 >= 5, 10, 0.5)
    t = now_s()

    def readings(meter: str, until: datetime) -> list[Reading]:
        return [Reading(site="s1", meter=meter, ts=until - timedelta(minutes=i), seq=1000 - i, flow_rate=10.0, pressure=3.0)
                for i in range(120, -1, -1)]

    store.write_readings(readings("m1", t - timedelta(seconds=1)))
    assert evaluate(rule, url, db) == "normal"
    store.write_readings(readings("m2", t - timedelta(minutes=30)))  # silent for half an hour
    assert evaluate(rule, url, db) == "firing"


def test_service_offline_rule(influx) -> None:
    store, url, db = influx
    rule = rules()["flowwatch-service-offline"]
    t = now_s()
    store.write_service_status([("detector", True, t - timedelta(minutes=5)), ("exporter", True, t - timedelta(minutes=5))])
    assert evaluate(rule, url, db) == "normal"
    store.write_service_status([("exporter", False, t - timedelta(minutes=1))])
    assert evaluate(rule, url, db) == "firing"
    store.write_service_status([("exporter", True, t)])
    assert evaluate(rule, url, db) == "normal"


def test_night_flow_rise_rule(influx) -> None:
    store, url, db = influx
    rule = rules()["flowwatch-night-flow-rise"]
    t = now_s()
    week = [NightFlow("s1", "m1", date(2026, 1, 1) + timedelta(days=i), t - timedelta(days=8 - i), 1.0 + 0.02 * i) for i in range(7)]
    store.write_night_flow(week)
    assert evaluate(rule, url, db) == "normal"  # no night in the last 36 hours: no data
    last = NightFlow("s1", "m1", date(2026, 1, 8), t - timedelta(hours=20), 1.1)
    store.write_night_flow([last])
    assert evaluate(rule, url, db) == "normal"  # within the week's level
    store.write_night_flow([NightFlow("s1", "m1", date(2026, 1, 8), last.ts, 2.0)])
    assert evaluate(rule, url, db) == "firing"  # last night's minimum doubled: a leak
