"""InfluxDB adapter through the v1-compatible HTTP API: line protocol to ``/write``, InfluxQL on ``/query``.

That surface is served by InfluxDB 1.x, by 2.x (token auth; the bucket is the database through the
automatic DBRP mapping of 2.4+) and by 3.x, so this one code path serves all three. The
``influxdb-client`` package speaks only the 2.x API (``/api/v2/write``, Flux), which 1.x before 1.8
lacks and 3.x cannot query.

Series layout (identity = measurement + tags + time, so a rewrite overwrites itself):

| measurement | tags                         | time        | fields                                        |
|-------------|------------------------------|-------------|-----------------------------------------------|
| readings    | site, meter                  | ts          | flow_rate, pressure, seq, quality, source     |
| anomalies   | site, meter, kind, signal    | start       | severity, state, end, ts, value, threshold, message |
| forecasts   | site, meter, signal, lead    | target_time | value, model, issued_at   (lead = minutes)   |
| thresholds  | site, meter, signal          | computed_at | method, payload (JSON)                        |
| night_flow  | site, meter                  | night start | value, day                                    |

Network errors, timeouts and 5xx are retried with backoff for ``retry_for_s``; a 4xx is an error
that names what the server refused (e.g. a field type conflict).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

import requests

from shared.messages import Anomaly, Forecast, Reading, Thresholds
from shared.settings import InfluxSettings
from shared.store.base import (
    NightFlow,
    Store,
    StoreError,
    StoreUnavailable,
    epoch,
    from_epoch,
    thresholds_from_payload,
    thresholds_payload,
    to_reading_frame,
)

logger = logging.getLogger(__name__)


def _tag(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _str_field(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fields(pairs: Iterable[tuple[str, object]]) -> str:
    out = []
    for k, v in pairs:
        if v is None:
            continue
        if isinstance(v, bool):
            out.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, int):
            out.append(f"{k}={v}i")
        elif isinstance(v, float):
            if math.isfinite(v):
                out.append(f"{k}={v!r}")
        else:
            out.append(f"{k}={_str_field(str(v))}")
    return ",".join(out)


def _ql(v: str) -> str:
    """An InfluxQL string literal."""
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ql_time(ts: datetime) -> str:
    return f"{epoch(ts)}s"


class InfluxStore(Store):
    name = "influxdb"
    parse_ahead = True

    def __init__(self, settings: InfluxSettings, *, retry_for_s: float = 3600.0) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.retry_for_s = retry_for_s
        self.http = requests.Session()
        token = settings.secret_token()
        if token:
            self.http.headers["Authorization"] = f"Token {token}"
        self._auth_params: dict[str, str] = {}
        if settings.username:
            self._auth_params = {"u": settings.username, "p": settings.password.get_secret_value() if settings.password else ""}
        if settings.create_database:
            try:
                self._post_query(f'CREATE DATABASE "{settings.database}"')
            except StoreError as exc:  # 2.x/3.x refuse it; the bucket must exist there
                logger.info("CREATE DATABASE not accepted (%s); assuming bucket %r exists", exc, settings.database)

    # --- HTTP with retry ----------------------------------------------------------------------
    def _request(self, method: str, path: str, *, params: dict, data: bytes | None = None, stream: bool = False) -> requests.Response:
        deadline = time.monotonic() + self.retry_for_s
        delay, warned = 0.2, False
        while True:
            try:
                resp = self.http.request(
                    method, self.url + path, params={**params, **self._auth_params}, data=data,
                    timeout=self.settings.timeout_s, stream=stream,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = f"{type(exc).__name__}"
            else:
                if resp.status_code < 400:
                    return resp
                body = resp.text[:500]
                if resp.status_code < 500 and resp.status_code != 429:
                    try:
                        body = resp.json().get("error", body)
                    except ValueError:
                        pass
                    hint = " (check store.influxdb.token / username / password)" if resp.status_code in (401, 403) else ""
                    raise StoreError(f"InfluxDB {path} refused the request ({resp.status_code}): {body}{hint}")
                reason = f"HTTP {resp.status_code}: {body}"
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"InfluxDB at {self.url} unreachable for {self.retry_for_s:.0f}s: {reason} (check store.influxdb.url)")
            if not warned:
                logger.warning("InfluxDB at %s unavailable (%s); retrying with backoff", self.url, reason)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _post_query(self, q: str) -> dict:
        resp = self._request("POST", "/query", params={"db": self.settings.database, "q": q})
        data = resp.json()
        for r in data.get("results", []):
            if "error" in r:
                raise StoreError(f"InfluxQL error: {r['error']} in {q!r}")
        return data

    def _select(self, q: str) -> list[dict]:
        """Run a SELECT (chunked, epoch seconds) and return its series."""
        params = {"db": self.settings.database, "q": q, "epoch": "s", "chunked": "true", "chunk_size": "50000"}
        if self.settings.retention_policy:
            params["rp"] = self.settings.retention_policy
        resp = self._request("GET", "/query", params=params)
        series: list[dict] = []
        for line in resp.text.splitlines():
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise StoreError(f"InfluxQL error: {chunk['error']} in {q!r}")
            for r in chunk.get("results", []):
                if "error" in r:
                    raise StoreError(f"InfluxQL error: {r['error']} in {q!r}")
                series.extend(r.get("series", []))
        return series

    def _write_lines(self, lines: Sequence[str]) -> int:
        params = {"db": self.settings.database, "precision": "s"}
        if self.settings.retention_policy:
            params["rp"] = self.settings.retention_policy
        bs = self.settings.batch_size
        bodies = ("\n".join(lines[i : i + bs]).encode() for i in range(0, len(lines), bs))
        if len(lines) <= bs:
            for body in bodies:
                self._request("POST", "/write", params=params, data=body)
            return len(lines)
        # A bulk write: two requests in flight, so the server parses one batch while the next is
        # sent (points are idempotent, the order of batches does not matter); any failure fails all.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="influx-write") as pool:
            for fut in [pool.submit(self._request, "POST", "/write", params=params, data=b) for b in bodies]:
                fut.result()
        return len(lines)

    # --- writes ---------------------------------------------------------------------------------
    def _reading_line(self, r: Reading) -> str:
        fields = _fields([("flow_rate", r.flow_rate), ("pressure", r.pressure), ("seq", r.seq), ("quality", ",".join(r.quality)), ("source", r.source)])
        return f"readings,meter={_tag(r.meter)},site={_tag(r.site)} {fields} {epoch(r.ts)}"

    def write_readings(self, readings: Sequence[Reading]) -> int:
        return self._write_lines([self._reading_line(r) for r in readings])

    def write_reading_frame(self, site: str, meter: str, frame: pd.DataFrame) -> int:
        import numpy as np
        import pandas as pd

        f = to_reading_frame(frame)
        if f.empty:
            return 0
        prefix = f"readings,meter={_tag(meter)},site={_tag(site)} "
        ts = f.index.as_unit("s").asi8.astype(str)
        # Vectorised field strings; NaN fields are left out (a point keeps its seq field regardless).
        flow = f["flow_rate"].to_numpy()
        pres = f["pressure"].to_numpy()
        flow_s = np.where(np.isfinite(flow), "flow_rate=" + pd.Series(flow).map(repr).to_numpy(dtype=object) + ",", "")
        pres_s = np.where(np.isfinite(pres), "pressure=" + pd.Series(pres).map(repr).to_numpy(dtype=object) + ",", "")
        seq_s = pd.Series(f["seq"].fillna(-1).astype("int64").to_numpy()).astype(str).to_numpy(dtype=object)
        qual = f["quality"].astype(str).to_numpy(dtype=object)
        src = f["source"].astype(str).map(_str_field).to_numpy(dtype=object)
        qual_s = np.where(qual != "", ',quality="' + qual + '"', "")
        lines = (prefix + flow_s + pres_s + "seq=" + seq_s + "i" + qual_s + ",source=" + src + " " + ts).tolist()
        return self._write_lines(lines)

    def write_anomalies(self, anomalies: Sequence[Anomaly]) -> int:
        lines = []
        for a in anomalies:
            fields = _fields([
                ("severity", a.severity), ("state", a.state), ("end", epoch(a.end) if a.end else None),
                ("ts", epoch(a.ts)), ("value", a.value), ("threshold", a.threshold), ("message", a.message),
            ])
            lines.append(
                f"anomalies,kind={_tag(a.kind)},meter={_tag(a.meter)},signal={_tag(a.signal)},site={_tag(a.site)} {fields} {epoch(a.start)}"
            )
        return self._write_lines(lines)

    def write_forecast(self, forecast: Forecast) -> int:
        f = forecast
        issued = epoch(f.issued_at)
        lines = []
        for i, v in enumerate(f.values):
            lead = f.step_minutes * (i + 1)
            fields = _fields([("value", float(v)), ("model", f.model), ("issued_at", issued)])
            lines.append(
                f"forecasts,lead={lead},meter={_tag(f.meter)},signal={_tag(f.signal)},site={_tag(f.site)} {fields} {issued + 60 * lead}"
            )
        return self._write_lines(lines)

    def write_thresholds(self, thresholds: Thresholds) -> None:
        t = thresholds
        fields = _fields([("method", t.method), ("payload", thresholds_payload(t))])
        self._write_lines([f"thresholds,meter={_tag(t.meter)},signal={_tag(t.signal)},site={_tag(t.site)} {fields} {epoch(t.computed_at)}"])

    def write_night_flow(self, items: Sequence[NightFlow]) -> int:
        return self._write_lines([
            f"night_flow,meter={_tag(n.meter)},site={_tag(n.site)} {_fields([('value', float(n.value)), ('day', n.day.isoformat())])} {epoch(n.ts)}"
            for n in items
        ])

    # --- reads ----------------------------------------------------------------------------------
    def _where(self, site: str, meter: str, start: datetime | None = None, end: datetime | None = None) -> str:
        w = f"site = {_ql(site)} AND meter = {_ql(meter)}"
        if start is not None:
            w += f" AND time >= {_ql_time(start)}"
        if end is not None:
            w += f" AND time < {_ql_time(end)}"
        return w

    @staticmethod
    def _rows(series: list[dict], columns: list[str]) -> list[list]:
        rows: list[list] = []
        for s in series:
            idx = [s["columns"].index(c) if c in s["columns"] else None for c in columns]
            rows.extend([[v[i] if i is not None else None for i in idx] for v in s["values"]])
        return rows

    def _reading_rows(self, site: str, meter: str, start: datetime, end: datetime) -> list[tuple]:
        series = self._select(f"SELECT flow_rate, pressure, seq, quality, source FROM readings WHERE {self._where(site, meter, start, end)}")
        return [tuple(r) for r in self._rows(series, ["time", "seq", "flow_rate", "pressure", "quality", "source"])]

    def _anomaly_rows(self, site: str, meter: str, start: datetime, end: datetime) -> list[tuple]:
        series = self._select(f"SELECT * FROM anomalies WHERE {self._where(site, meter, start, end)}")
        rows = self._rows(series, ["kind", "signal", "severity", "state", "time", "end", "ts", "value", "threshold", "message"])
        return sorted((tuple(r) for r in rows), key=lambda r: (r[4], r[0], r[1]))

    def _forecast_rows(self, site: str, meter: str, start: datetime, end: datetime, signal: str | None) -> list[tuple]:
        where = self._where(site, meter, start, end)
        if signal:
            where += f" AND signal = {_ql(signal)}"
        series = self._select(f"SELECT * FROM forecasts WHERE {where}")
        rows = self._rows(series, ["signal", "issued_at", "time", "value", "model"])
        return sorted((tuple(r) for r in rows), key=lambda r: (r[1], r[0], r[2]))

    def latest_thresholds(self, site: str, meter: str, signal: str) -> Thresholds | None:
        series = self._select(
            f"SELECT payload FROM thresholds WHERE {self._where(site, meter)} AND signal = {_ql(signal)} ORDER BY time DESC LIMIT 1"
        )
        rows = self._rows(series, ["payload"])
        return thresholds_from_payload(rows[0][0]) if rows else None

    def read_night_flow(self, site: str, meter: str, start: date, end: date) -> list[NightFlow]:
        series = self._select(f"SELECT value, day FROM night_flow WHERE {self._where(site, meter)}")
        out = []
        for ts, value, day in self._rows(series, ["time", "value", "day"]):
            d = date.fromisoformat(day)
            if start <= d < end:
                out.append(NightFlow(site, meter, d, from_epoch(ts), float(value)))
        return sorted(out, key=lambda n: n.day)

    def last_reading_time(self, site: str, meter: str) -> datetime | None:
        series = self._select(f"SELECT seq FROM readings WHERE {self._where(site, meter)} ORDER BY time DESC LIMIT 1")
        rows = self._rows(series, ["time"])
        return from_epoch(rows[0][0]) if rows else None

    def meters(self) -> list[tuple[str, str]]:
        series = self._select("SHOW SERIES FROM readings")
        out = set()
        for s in series:
            for (key,) in s.get("values", []):
                tags = dict(p.split("=", 1) for p in key.split(",")[1:])
                out.add((tags.get("site", ""), tags.get("meter", "")))
        return sorted(out)

    def purge(self, before: datetime) -> None:
        for m in ("readings", "anomalies", "forecasts", "night_flow"):
            try:
                self._post_query(f"DELETE FROM {m} WHERE time < {_ql_time(before)}")
            except StoreError as exc:  # 2.x/3.x: the bucket's retention period does this instead
                logger.info("purge of %s not accepted (%s); relying on the bucket retention", m, exc)
                return

    def close(self) -> None:
        self.http.close()
