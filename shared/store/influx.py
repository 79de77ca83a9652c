"""InfluxDB adapter through the v1-compatible HTTP API: line protocol to ``/write``, InfluxQL on ``/query``.

That surface is served by InfluxDB 1.x, by 2.x (token auth; the bucket is the database through the
automatic DBRP mapping of 2.4+) and by 3.x, so this one code path serves all three. The
``influxdb-client`` package speaks only the 2.x API (``/api/v2/write``, Flux), which 1.x before 1.8
lacks and 3.x cannot query.

Series layout (identity = measurement + tags + time, so a rewrite overwrites itself):

| measurement | tags                         | time        | fields                                        |
|-------------|------------------------------|-------------|-----------------------------------------------|
| readings    | site, meter                  | ts          | flow_rate, pressure, seq, quality, source, extra_<name> (Reading.extra) |
| reading_conflicts | site, meter, variant   | ts          | flow_rate, pressure, quality, seq, source, stored_flow_rate, stored_pressure, stored_quality, seen_at |
| anomalies   | site, meter, kind, signal    | start       | severity, state, end, ts, value, threshold, message |
| forecasts   | site, meter, signal, lead    | target_time | value, model, issued_at   (lead = minutes)   |
| thresholds  | site, meter, signal          | computed_at | method, payload (JSON)                        |
| night_flow  | site, meter                  | night start | value, day                                    |
| alert_actions | action, id                 | ts          | payload (JSON AlertAction), alert_id, site, meter, kind, until, by |
| service_status | service                   | ts          | online (1/0)                                  |

A point written again overwrites the stored one, so readings are never written blind: each batch
first reads its time range back (one InfluxQL query per meter and batch), writes only the new
readings, counts the identical ones and writes the ones with other values to ``reading_conflicts``
(``variant`` = a hash of the newcomer's values, so a redelivered conflict overwrites itself). Two
writers racing on the same new minute could still overwrite each other; each meter has one writer
(the detector, or an import).

Retention is the server's: at start the retention policy written to (``store.influxdb.retention_policy``,
else the database's default) gets a duration of ``store.retention_days`` (1.x; 2.x/3.x refuse it and
use the bucket's retention period). ``purge`` also deletes older points where the server allows it.

Network errors, timeouts and 5xx are retried ``store.influxdb.retries`` times with backoff (0.2 s
doubling up to 2 s, so a server that is back is tried again within 2 s: 8 retries wait about 11 s);
then :class:`StoreUnavailable` (a service's inbox retries the work again later). A 4xx is an error that names what the server refused (e.g. a field
type conflict).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

import requests

from shared.messages import AlertAction, Anomaly, Forecast, Reading, Thresholds
from shared.settings import InfluxSettings
from shared.store.base import (
    NightFlow,
    ReadingConflict,
    Store,
    StoreError,
    StoreUnavailable,
    WriteResult,
    conflict_variant,
    epoch,
    extra_frame,
    from_epoch,
    reading_values,
    thresholds_from_payload,
    thresholds_payload,
    to_reading_frame,
)

logger = logging.getLogger(__name__)


def _tag(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _str_field(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


EXTRA_PREFIX = "extra_"  # field name prefix of a reading's extra values (Reading.extra)


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


RETRY_FIRST_S = 0.2
RETRY_MAX_S = 2.0  # also the longest a recovered server waits for the next try


def _shard_duration(days: int) -> str:
    """InfluxDB 1.x's default shard group duration for a retention period (it must not exceed it)."""
    return "1h" if days < 2 else "1d" if days <= 180 else "7d"


class InfluxStore(Store):
    name = "influxdb"
    parse_ahead = True

    def __init__(self, settings: InfluxSettings, *, retention_days: int | None = None) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.http = requests.Session()
        token = settings.secret_token()
        if token:
            self.http.headers["Authorization"] = f"Token {token}"
        self._auth_params: dict[str, str] = {}
        if settings.username:
            self._auth_params = {"u": settings.username, "p": settings.password.get_secret_value() if settings.password else ""}
        try:
            if settings.create_database:
                try:
                    self._post_query(f'CREATE DATABASE "{settings.database}"')
                except StoreUnavailable:
                    raise
                except StoreError as exc:  # 2.x/3.x refuse it; the bucket must exist there
                    logger.info("CREATE DATABASE not accepted (%s); assuming bucket %r exists", exc, settings.database)
            if retention_days is not None and settings.apply_retention:
                self._apply_retention(retention_days)
        except StoreUnavailable as exc:  # the first write retries again; the retention is set at the next start
            logger.warning("InfluxDB not reachable at start (%s); database and retention policy left as they are", exc)

    def _apply_retention(self, days: int) -> None:
        """Give the retention policy written to a duration of ``days`` (1.x; 2.x/3.x: the bucket's period)."""
        db = self.settings.database
        try:
            series = self._select(f'SHOW RETENTION POLICIES ON "{db}"')
            policies = {str(v[0]): v for s in series for v in s.get("values", [])}
            cols = series[0]["columns"] if series else []
            name = self.settings.retention_policy or next(
                (n for n, v in policies.items() if "default" in cols and v[cols.index("default")]), "autogen")
            want = f"{days * 24}h0m0s"
            if name in policies and policies[name][cols.index("duration")] == want:
                return
            verb = "ALTER" if name in policies else "CREATE"
            extra = "" if name in policies else " REPLICATION 1"
            self._post_query(f'{verb} RETENTION POLICY "{name}" ON "{db}" DURATION {days}d{extra} SHARD DURATION {_shard_duration(days)}')
            logger.info("InfluxDB retention policy %s.%s: data older than %d days is dropped by the server (store.retention_days)", db, name, days)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            logger.info("retention policy not set (%s); the bucket's retention period applies (2.x/3.x)", exc)

    # --- HTTP with retry ----------------------------------------------------------------------
    def _request(self, method: str, path: str, *, params: dict, data: bytes | None = None, stream: bool = False) -> requests.Response:
        retries = self.settings.retries
        delay, warned, attempt = RETRY_FIRST_S, False, 0
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
                    self.failing_since = None
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
            if self.failing_since is None:
                self.failing_since = time.time()
            if attempt >= retries:
                raise StoreUnavailable(
                    f"InfluxDB at {self.url} unavailable after {attempt + 1} attempt(s) (store.influxdb.retries={retries}): "
                    f"{reason} (check store.influxdb.url)"
                )
            if not warned:
                logger.warning("InfluxDB at %s unavailable (%s); retrying with backoff (store.influxdb.retries=%d)", self.url, reason, retries)
                warned = True
            attempt += 1
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

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
        pairs = [("flow_rate", r.flow_rate), ("pressure", r.pressure), ("seq", r.seq), ("quality", ",".join(r.quality)), ("source", r.source)]
        if r.extra:  # extra values as float fields extra_<name> (names are topic levels: nothing to escape)
            pairs += [(f"{EXTRA_PREFIX}{k}", float(v)) for k, v in r.extra.items()]
        fields = _fields(pairs)
        return f"readings,meter={_tag(r.meter)},site={_tag(r.site)} {fields} {epoch(r.ts)}"

    def _stored_values(self, site: str, meter: str, lo: int, hi: int) -> dict[int, tuple]:
        """{ts: (flow_rate, pressure, quality)} of the stored readings with lo <= ts <= hi (one query)."""
        series = self._select(
            f"SELECT flow_rate, pressure, quality FROM readings WHERE {self._where(site, meter)} AND time >= {lo}s AND time <= {hi}s"
        )
        return {int(t): reading_values(f, p, q) for t, f, p, q in self._rows(series, ["time", "flow_rate", "pressure", "quality"])}

    def _conflict_line(self, c: ReadingConflict) -> str:
        fields = _fields([
            ("flow_rate", c.flow_rate), ("pressure", c.pressure), ("quality", c.quality), ("seq", c.seq), ("source", c.source),
            ("stored_flow_rate", c.stored_flow_rate), ("stored_pressure", c.stored_pressure),
            ("stored_quality", c.stored_quality), ("seen_at", epoch(c.seen_at)),
        ])
        variant = conflict_variant((c.flow_rate, c.pressure, c.quality))
        return f"reading_conflicts,meter={_tag(c.meter)},site={_tag(c.site)},variant={variant} {fields} {epoch(c.ts)}"

    @staticmethod
    def _split(site: str, meter: str, keys: Sequence[tuple[int, tuple, int | None, str]], stored: dict[int, tuple]) -> tuple[list[bool], list[ReadingConflict]]:
        """Which of (ts, values, seq, source) are new; the conflicts among the rest. The first of a key wins."""
        now = datetime.now(UTC).replace(microsecond=0)
        new, conflicts = [], []
        for ts, values, seq, source in keys:
            old = stored.get(ts)
            if old is None:
                stored[ts] = values
                new.append(True)
                continue
            new.append(False)
            if values != old:
                conflicts.append(ReadingConflict(site, meter, from_epoch(ts), *values, *old, seq=seq, source=source, seen_at=now))
        return new, conflicts

    def write_readings(self, readings: Sequence[Reading]) -> WriteResult:
        groups: dict[tuple[str, str], list[Reading]] = defaultdict(list)
        for r in readings:
            groups[(r.site, r.meter)].append(r)
        lines: list[str] = []
        conflicts: list[ReadingConflict] = []
        for (site, meter), rs in groups.items():
            tss = [epoch(r.ts) for r in rs]
            stored = self._stored_values(site, meter, min(tss), max(tss))
            keys = [(t, reading_values(r.flow_rate, r.pressure, ",".join(r.quality)), r.seq, r.source) for t, r in zip(tss, rs, strict=True)]
            new, cs = self._split(site, meter, keys, stored)
            lines += [self._reading_line(r) for r, n in zip(rs, new, strict=True) if n]
            conflicts += cs
        n_new = len(lines)
        self._write_lines(lines + [self._conflict_line(c) for c in conflicts])
        if conflicts:
            self._log_conflicts(conflicts)
        return WriteResult(n_new, len(readings) - n_new - len(conflicts), len(conflicts))

    def write_reading_frame(self, site: str, meter: str, frame: pd.DataFrame) -> WriteResult:
        import numpy as np
        import pandas as pd

        f = to_reading_frame(frame)
        if f.empty:
            return WriteResult()
        secs = f.index.as_unit("s").asi8
        stored = self._stored_values(site, meter, int(secs.min()), int(secs.max()))
        conflicts: list[ReadingConflict] = []
        if stored or not f.index.is_unique:  # a fresh range (the usual import) skips this row-by-row pass
            seq = f["seq"].astype("float64").to_numpy()
            keys = [
                (int(t), reading_values(fl, pr, q), None if s != s else int(s), str(src))
                for t, fl, pr, q, s, src in zip(secs.tolist(), f["flow_rate"].tolist(), f["pressure"].tolist(),
                                                 f["quality"].astype(str).tolist(), seq.tolist(), f["source"].astype(str).tolist(), strict=True)
            ]
            new, conflicts = self._split(site, meter, keys, stored)
            f = f[np.asarray(new, dtype=bool)]
        n_new = len(f)
        lines: list[str] = []
        if n_new:
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
        self._write_lines(lines + [self._conflict_line(c) for c in conflicts])
        if conflicts:
            self._log_conflicts(conflicts)
        return WriteResult(n_new, len(secs) - n_new - len(conflicts), len(conflicts))

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
            f"night_flow,meter={_tag(n.meter)},site={_tag(n.site)} {_fields([('value', float(n.value)), ('day', n.day.isoformat()), ('day_mean', n.day_mean)])} {epoch(n.ts)}"
            for n in items
        ])

    def write_alert_actions(self, actions: Sequence[AlertAction]) -> int:
        lines = []
        for a in actions:
            fields = _fields([
                ("payload", a.model_dump_json()), ("alert_id", a.alert_id), ("site", a.site), ("meter", a.meter),
                ("kind", a.kind), ("until", epoch(a.until) if a.until else None), ("by", a.by),
            ])
            lines.append(f"alert_actions,action={_tag(a.action)},id={_tag(a.id)} {fields} {epoch(a.ts)}")
        return self._write_lines(lines)

    def read_alert_actions(self, since: datetime) -> list[AlertAction]:
        series = self._select(f"SELECT payload FROM alert_actions WHERE time >= {_ql_time(since)}")
        out = [AlertAction.model_validate_json(p) for _ts, p in self._rows(series, ["time", "payload"])]
        return sorted(out, key=lambda a: (a.ts, a.id))

    def write_service_status(self, items: Sequence[tuple[str, bool, datetime]]) -> int:
        return self._write_lines([f"service_status,service={_tag(name)} online={int(online)}i {epoch(ts)}" for name, online, ts in items])

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

    def read_extra(self, site: str, meter: str, start: datetime, end: datetime) -> pd.DataFrame:
        series = self._select(f"SELECT /^{EXTRA_PREFIX}/ FROM readings WHERE {self._where(site, meter, start, end)}")
        rows = []
        for s in series:
            cols = s["columns"]
            for v in s["values"]:
                t = int(v[0])  # epoch seconds (_select asks for them)
                rows += [(t, c[len(EXTRA_PREFIX):], float(x)) for c, x in zip(cols[1:], v[1:], strict=True) if x is not None]
        return extra_frame(rows)

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
        series = self._select(f"SELECT value, day, day_mean FROM night_flow WHERE {self._where(site, meter)}")
        out = []
        for ts, value, day, dm in self._rows(series, ["time", "value", "day", "day_mean"]):
            d = date.fromisoformat(day)
            if start <= d < end:
                out.append(NightFlow(site, meter, d, from_epoch(ts), float(value), None if dm is None else float(dm)))
        return sorted(out, key=lambda n: n.day)

    def last_reading_time(self, site: str, meter: str) -> datetime | None:
        series = self._select(f"SELECT seq FROM readings WHERE {self._where(site, meter)} ORDER BY time DESC LIMIT 1")
        rows = self._rows(series, ["time"])
        return from_epoch(rows[0][0]) if rows else None

    def first_reading_time(self) -> datetime | None:
        series = self._select("SELECT seq FROM readings ORDER BY time ASC LIMIT 1")
        rows = self._rows(series, ["time"])
        return from_epoch(min(r[0] for r in rows)) if rows else None

    def read_conflicts(self, site: str, meter: str, start: datetime, end: datetime) -> list[ReadingConflict]:
        series = self._select(f"SELECT * FROM reading_conflicts WHERE {self._where(site, meter, start, end)}")
        cols = ["time", "flow_rate", "pressure", "quality", "stored_flow_rate", "stored_pressure", "stored_quality", "seq", "source", "seen_at"]
        out = [
            ReadingConflict(site, meter, from_epoch(ts), *reading_values(f, p, q), *reading_values(sf, sp, sq),
                            seq=None if seq is None else int(seq), source=src or "", seen_at=from_epoch(seen))
            for ts, f, p, q, sf, sp, sq, seq, src, seen in self._rows(series, cols)
        ]
        return sorted(out, key=lambda c: (c.ts, c.seen_at))

    def meters(self) -> list[tuple[str, str]]:
        series = self._select("SHOW SERIES FROM readings")
        out = set()
        for s in series:
            for (key,) in s.get("values", []):
                tags = dict(p.split("=", 1) for p in key.split(",")[1:])
                out.add((tags.get("site", ""), tags.get("meter", "")))
        return sorted(out)

    def purge(self, before: datetime) -> int:
        """DELETE older points where the server allows it (1.x); the retention policy drops them anyway, a
        shard group (up to 7 days) at a time. Thresholds are left to the retention policy. Returns 0 (not counted)."""
        for m in ("readings", "anomalies", "forecasts", "night_flow", "reading_conflicts"):
            try:
                self._post_query(f"DELETE FROM {m} WHERE time < {_ql_time(before)}")
            except StoreUnavailable:
                raise
            except StoreError as exc:  # 2.x/3.x: the bucket's retention period does this instead
                logger.info("purge of %s not accepted (%s); relying on the bucket retention", m, exc)
                break
        return 0

    def close(self) -> None:
        self.http.close()
