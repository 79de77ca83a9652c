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
METER2 = "meter2"  # a second selected meter: flow only, one open critical anomaly, its own night flow
OTHER = "meter3"  # stored but not selected: must not show up
SELECTED = (METER, METER2)


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
        # Grafana's regex format of a multi-value variable: (a|b), each value regex-escaped
        .replace("${site:regex}", f"({SITE})")
        .replace("${meter:regex}", "(" + "|".join(SELECTED) + ")")
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
    # meter2: flow only, every 15 minutes, its last reading 7 minutes older than meter1's
    store.write_readings([Reading(site=SITE, meter=m, ts=now - timedelta(minutes=7 + 15 * i), seq=i, flow_rate=50.0 + i, pressure=None, source="replay")
                          for m in (METER2, OTHER) for i in range(2 * 24 * 4)])
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
    store.write_night_flow([NightFlow(SITE, METER2, date.today() - timedelta(days=d), now - timedelta(days=d, hours=3), 30.0 + d) for d in range(2)])
    store.write_night_flow([NightFlow(SITE, OTHER, date.today(), now - timedelta(hours=3), 99.0)])
    store.write_anomalies([Anomaly(site=SITE, meter=METER2, kind="burst", signal="flow_rate", severity="critical", state="open", start=t0,
                                   ts=t0, value=90.0, threshold=70.0, message="burst: flow +40 m³/h")])
    store.write_anomalies([Anomaly(site=SITE, meter=OTHER, kind="threshold", signal="flow_rate", severity="critical", state="open", start=t0,
                                   ts=t0, value=1.0, threshold=2.0, message="not selected")])
    store.write_alert_actions([  # flowwatch alerts ack / silence (the notifier)
        AlertAction(id="a1", action="ack", ts=now - timedelta(hours=4), alert_id="0123456789", by="kim"),
        AlertAction(id="s1", action="silence", ts=now - timedelta(hours=1), site=SITE, meter=METER, until=now + timedelta(hours=1)),
    ])
    yield influxd, store.settings.database, now
    store.close()


def run_query(url: str, db: str, q: str) -> list[dict]:
    resp = requests.get(url + "/query", params={"db": db, "q": q, "epoch": "ms"}, timeout=30)
    resp.raise_for_status()
    results = resp.json()["results"]
    for r in results:
        assert "error" not in r, f"{r['error']} in {q}"
    return [s for r in results for s in r.get("series", [])]


def test_every_query_returns_data(dashboard: dict, seeded) -> None:
    influxd, db, _ = seeded
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
    influxd, db, _ = seeded
    v = {x["name"]: x["query"] for x in dashboard["templating"]["list"]}
    sites = [row[1] for s in run_query(influxd.url, db, fill(v["site"])) for row in s["values"]]
    meters = [row[1] for s in run_query(influxd.url, db, fill(v["meter"])) for row in s["values"]]
    assert sites == [SITE] and meters == [METER, METER2, OTHER]
    for v in dashboard["templating"]["list"]:
        assert v["multi"] and v["includeAll"], f"variable {v['name']} must be multi-select with All"


def test_queries_filter_and_split_by_the_selected_meters(dashboard: dict, seeded) -> None:
    """With two meters selected, each query sees both and never the unselected one; panels that
    plot a per-meter series group by meter (or repeat per meter)."""
    influxd, db, _ = seeded
    for p in dashboard["panels"]:
        if "meter" not in json.dumps(p["targets"]):
            continue
        for t in p["targets"]:
            q = t["query"]
            assert "$meter" not in q.replace("${meter:regex}", ""), f"panel {p['title']!r}: $meter without the regex format"
            series = run_query(influxd.url, db, fill(q))
            assert OTHER not in json.dumps(series), f"panel {p['title']!r} shows an unselected meter"
            if p["type"] == "timeseries" and "GROUP BY time(" in q:
                assert p.get("repeat") == "meter" or '"meter"' in q.split("GROUP BY", 1)[1], f"panel {p['title']!r} mixes meters"
                meters = {s["tags"]["meter"] for s in series}
                assert METER in meters, p["title"]
                if 'mean("flow_rate")' in q:  # both meters have flow (meter2 has no pressure nor extras)
                    assert meters == set(SELECTED), p["title"]


def state_rows(panel: dict, url: str, db: str) -> dict[tuple[str, str], dict]:
    """The state panel's queries, combined the way its transformations do (merge, then one row per
    site and meter: the newest Time, the last non-null value of each column)."""
    rows: dict[tuple[str, str], dict] = {}
    for t in panel["targets"]:
        assert t["resultFormat"] == "table"
        for s in run_query(url, db, fill(t["query"])):
            key = (s["tags"]["site"], s["tags"]["meter"])
            for values in s["values"]:
                row = rows.setdefault(key, {"Time": None})
                rec = dict(zip(s["columns"], values, strict=True))
                row["Time"] = max(x for x in (row["Time"], rec.pop("time")) if x is not None)
                row.update({k: v for k, v in rec.items() if v is not None})
    return rows


def test_state_panel_has_one_row_per_selected_meter(dashboard: dict, seeded) -> None:
    influxd, db, now = seeded
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Every meter's state"]
    assert panel["type"] == "table"
    grouped = next(t for t in panel["transformations"] if t["id"] == "groupBy")["options"]["fields"]
    assert {k for k, v in grouped.items() if v["operation"] == "groupby"} == {"site", "meter"}
    rows = state_rows(panel, influxd.url, db)
    assert set(rows) == {(SITE, METER), (SITE, METER2)}
    ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731
    m1, m2 = rows[(SITE, METER)], rows[(SITE, METER2)]
    # the last reading's time (the panel shows its age)
    assert m1["Time"] == ms(now - timedelta(minutes=1)) and m2["Time"] == ms(now - timedelta(minutes=7))
    # meter1: two open warnings (its burst is closed); meter2: one open critical burst
    assert (m1["open anomalies"], m1.get("open critical"), m1["open warning"]) == (2, None, 2)
    assert (m2["open anomalies"], m2["open critical"], m2.get("open warning")) == (1, 1, None)
    assert m1["night flow"] == 12.0 and m2["night flow"] == 30.0


def test_open_anomaly_count_and_forecast_overlay(dashboard: dict, seeded) -> None:
    influxd, db, _ = seeded
    by_title = {p["title"]: p for p in dashboard["panels"]}
    series = run_query(influxd.url, db, fill(by_title["Open anomalies"]["targets"][0]["query"]))
    assert series[0]["values"][0][1] == 3  # meter1's two open warnings + meter2's open burst, not meter3's
    flow = by_title["Flow rate with the forecast — $meter"]["targets"]
    assert {t["alias"] for t in flow} >= {"Flow rate", "forecast"}
