"""Every Grafana query (panels, template variables, annotations) runs against a real InfluxDB seeded
through ``InfluxStore`` and returns data; the datasource is provisioned with a pinned uid."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml

from shared.messages import AlertAction, Anomaly, Band, Forecast, Reading, Thresholds
from shared.store.base import NightFlow
from shared.store.influx import InfluxStore

pytestmark = pytest.mark.influx

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "flowwatch.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "flowwatch.yaml"
SITE, METER = "site1", "meter1"


def all_queries(dash: dict) -> list[tuple[str, str]]:
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["query"]))
    for v in dash["templating"]["list"]:
        out.append((f"variable {v['name']}", v["query"]))
    for a in dash["annotations"]["list"]:
        if "query" in a:
            out.append((f"annotation {a['name']}", a["query"]))
    return out


def fill(q: str) -> str:
    """What Grafana substitutes before sending a query."""
    return (
        q.replace("$timeFilter", "time >= now() - 7d")
        .replace("$__interval", "1m")
        .replace("/^$site$/", f"/^{SITE}$/")
        .replace("/^$meter$/", f"/^{METER}$/")
    )


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_datasource_and_dashboard_are_pinned(dashboard: dict) -> None:
    ds = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(ds) == 1
    uid = ds[0]["uid"]
    assert ds[0]["type"] == "influxdb" and ds[0]["jsonData"]["version"] == "InfluxQL"
    # the token comes from the generated secret, not from the file
    assert ds[0]["secureJsonData"]["httpHeaderValue1"] == "Token $__file{/run/flowwatch-secrets/influxdb/token}"
    text = DASHBOARD.read_text()
    assert "${DS_" not in text and "__inputs" not in dashboard
    uids = set(re.findall(r'"uid": "([^"]+)"', text)) - {dashboard["uid"], "-- Grafana --"}
    assert uids == {uid}
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in p["targets"])
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert ds[0]["url"] == "http://influxdb:8086" and "influxdb" in compose["services"]
    assert ds[0]["jsonData"]["dbName"] == compose["services"]["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"]


@pytest.fixture(scope="module")
def seeded(influxd):
    """A database with two days of data, written the way the services write it."""
    store = InfluxStore(influxd.settings(database=f"g_{uuid.uuid4().hex[:10]}"))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(days=2)
    readings = [
        Reading(site=SITE, meter=METER, ts=start + timedelta(minutes=i), seq=i, flow_rate=100 + (i % 60), pressure=3.0 + (i % 7) / 10,
                source="simulator", quality=("simulated",), extra={"totalizer": 1000.0 + i, "battery": 3.6} if i % 10 == 0 else None)
        for i in range(2 * 24 * 60)
    ]
    store.write_readings(readings)
    store.write_forecast(Forecast(site=SITE, meter=METER, signal="flow_rate", issued_at=now - timedelta(hours=2), step_minutes=10,
                                  values=(110, 111, 112, 113, 114, 115), model="seasonal-naive"))
    store.write_forecast(Forecast(site=SITE, meter=METER, signal="pressure", issued_at=now - timedelta(hours=2), step_minutes=10,
                                  values=(3.1, 3.2, 3.1, 3.0, 3.0, 3.1), model="seasonal-naive"))
    t0 = now - timedelta(hours=5)
    store.write_anomalies([
        Anomaly(site=SITE, meter=METER, kind="burst", signal="both", severity="critical", state="closed", start=t0,
                end=t0 + timedelta(minutes=20), ts=t0 + timedelta(minutes=20), value=400.0, threshold=250.0, message="burst: flow +300 m³/h, pressure -1 bar"),
        Anomaly(site=SITE, meter=METER, kind="threshold", signal="flow_rate", severity="warning", state="open", start=t0,
                ts=t0 + timedelta(minutes=1), value=180.0, threshold=170.0, message="flow above the band"),
        Anomaly(site=SITE, meter=METER, kind="threshold", signal="pressure", severity="warning", state="open", start=t0,
                ts=t0, value=1.5, threshold=2.0, message="pressure below the band"),
    ])
    for sig in ("flow_rate", "pressure"):
        store.write_thresholds(Thresholds(site=SITE, meter=METER, signal=sig, computed_at=start, method="static",
                                          bands=(Band(hour=0, daytype="weekday", lower=0, upper=200),)))
    store.write_night_flow([NightFlow(SITE, METER, date.today() - timedelta(days=d), now - timedelta(days=d, hours=3), 12.0 + d) for d in range(2)])
    store.write_alert_actions([  # flowwatch alerts ack / silence (the notifier)
        AlertAction(id="a1", action="ack", ts=now - timedelta(hours=4), alert_id="0123456789", by="kim"),
        AlertAction(id="s1", action="silence", ts=now - timedelta(hours=1), site=SITE, meter=METER, until=now + timedelta(hours=1)),
    ])
    yield influxd, store.settings.database
    store.close()


def run_query(url: str, db: str, q: str) -> list[dict]:
    resp = requests.get(url + "/query", params={"db": db, "q": q, "epoch": "ms"}, timeout=30)
    resp.raise_for_status()
    results = resp.json()["results"]
    for r in results:
        assert "error" not in r, f"{r['error']} in {q}"
    return [s for r in results for s in r.get("series", [])]


def test_every_query_returns_data(dashboard: dict, seeded) -> None:
    influxd, db = seeded
    queries = all_queries(dashboard)
    assert len(queries) >= 12
    for where, q in queries:
        filled = fill(q)
        assert "$" not in filled.replace("$/", ""), f"{where}: unfilled variable in {filled}"
        series = run_query(influxd.url, db, filled)
        values = [v for s in series for v in s["values"]]
        assert values, f"{where} returned no data: {filled}"
        assert any(x is not None for row in values for x in row[1:]), f"{where} returned only nulls: {filled}"


def test_variables_offer_the_seeded_meter(dashboard: dict, seeded) -> None:
    influxd, db = seeded
    v = {x["name"]: x["query"] for x in dashboard["templating"]["list"]}
    sites = [row[1] for s in run_query(influxd.url, db, fill(v["site"])) for row in s["values"]]
    meters = [row[1] for s in run_query(influxd.url, db, fill(v["meter"])) for row in s["values"]]
    assert sites == [SITE] and meters == [METER]


def test_open_anomaly_count_and_forecast_overlay(dashboard: dict, seeded) -> None:
    influxd, db = seeded
    by_title = {p["title"]: p for p in dashboard["panels"]}
    series = run_query(influxd.url, db, fill(by_title["Open anomalies"]["targets"][0]["query"]))
    assert series[0]["values"][0][1] == 2
    flow = by_title["Flow rate with the forecast"]["targets"]
    assert {t["alias"] for t in flow} >= {"Flow rate", "forecast"}
