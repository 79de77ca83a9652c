"""The central fleet dashboard: every query runs against a real InfluxDB holding two sites, written
by the recorder's store path (InfluxStore), and shows both; the central compose profile is wired."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from shared.messages import Anomaly, Reading
from shared.store.influx import InfluxStore
from tests.test_deploy_grafana import run_query

ROOT = Path(__file__).resolve().parents[1]
FLEET = ROOT / "grafana" / "central" / "dashboards" / "fleet.json"
SITES = {"siteA": ("m1", "m2"), "siteB": ("m1",)}


def fill(q: str) -> str:
    return q.replace("$timeFilter", "time >= now() - 7d").replace("$__interval", "1m")


@pytest.fixture(scope="module")
def fleet() -> dict:
    return json.loads(FLEET.read_text())


@pytest.fixture(scope="module")
def seeded(influxd):
    store = InfluxStore(influxd.settings(database=f"fleet_{uuid.uuid4().hex[:10]}"))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for site, meters in SITES.items():
        for meter in meters:
            store.write_readings([Reading(site=site, meter=meter, ts=now - timedelta(minutes=i), seq=i, flow_rate=50 + i % 90,
                                          pressure=3.0) for i in range(3 * 1440)])
    t0 = now - timedelta(hours=2)
    store.write_anomalies([
        Anomaly(site="siteA", meter="m2", kind="threshold", signal="flow_rate", severity="warning", state="open", start=t0,
                ts=t0, value=180.0, threshold=170.0, message="flow above the band"),
        Anomaly(site="siteB", meter="m1", kind="burst", signal="both", severity="critical", state="closed", start=t0,
                end=t0 + timedelta(minutes=5), ts=t0 + timedelta(minutes=5), value=400.0, threshold=250.0, message="burst"),
    ])
    yield influxd, store.settings.database
    store.close()


@pytest.mark.influx
def test_every_fleet_query_returns_data(fleet: dict, seeded) -> None:
    influxd, db = seeded
    targets = [(p["title"], t["query"]) for p in fleet["panels"] for t in p["targets"]]
    assert len(targets) >= 8
    for title, q in targets:
        series = run_query(influxd.url, db, fill(q))
        values = [v for s in series for v in s["values"]]
        assert values and any(x is not None for row in values for x in row[1:]), f"{title!r} returned no data: {q}"


@pytest.mark.influx
def test_fleet_shows_every_site_and_meter_and_the_open_alert(fleet: dict, seeded) -> None:
    influxd, db = seeded
    by = {p["id"]: p for p in fleet["panels"]}
    rows = run_query(influxd.url, db, fill(by[5]["targets"][0]["query"]))
    assert sorted((s["tags"]["site"], s["tags"]["meter"]) for s in rows) == [("siteA", "m1"), ("siteA", "m2"), ("siteB", "m1")]
    open_ = run_query(influxd.url, db, fill(by[6]["targets"][0]["query"]))
    assert [(s["tags"]["site"], s["tags"]["meter"], s["values"][0][1]) for s in open_] == [("siteA", "m2", 1)]
    assert run_query(influxd.url, db, fill(by[2]["targets"][0]["query"]))[0]["values"][0][1] == 3
    trend = run_query(influxd.url, db, fill(by[7]["targets"][0]["query"]))
    assert len(trend) == 3 and all(len(s["values"]) >= 3 for s in trend)


def test_central_profile_is_wired() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]
    central = {n for n, s in svc.items() if "central" in (s.get("profiles") or [])}
    assert central == {"central-init", "central-mosquitto", "central-influxdb", "recorder", "central-grafana"}
    assert not any("central" in (s.get("profiles") or []) for n, s in svc.items() if n not in central)
    # off the central server only TLS MQTT and Grafana (generated admin password); InfluxDB not at all
    assert svc["central-mosquitto"]["ports"] == ["${FLOWWATCH_CENTRAL_PORT:-8884}:8883"]
    assert "ports" not in svc["central-influxdb"]
    assert svc["central-grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/flowwatch-secrets/")
    ds = yaml.safe_load((ROOT / "grafana/central/provisioning/datasources/flowwatch.yaml").read_text())["datasources"][0]
    assert ds["url"] == "http://central-influxdb:8086" and ds["uid"] == "flowwatch-influxql"
    # the box: MQTT off the box on TLS only, InfluxDB on loopback, Grafana with a generated password
    assert svc["mosquitto"]["ports"] == ["${FLOWWATCH_MQTT_TLS_PORT:-8883}:8883"]
    assert all(p.startswith("127.0.0.1:") for p in svc["influxdb"]["ports"])
    assert svc["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/flowwatch-secrets/grafana/admin-password"
    assert svc["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
