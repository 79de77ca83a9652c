"""``store``: where readings, anomalies and forecasts are kept (SQLite or InfluxDB)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from shared.settings.base import Section, check_secret, read_secret


class SqliteSettings(Section):
    path: Path = Field(default=Path("flowwatch.db"), description="Database file; relative paths are under data_dir.")
    busy_timeout_ms: int = Field(default=5000, ge=0, description="How long SQLite waits on a lock before retrying.")
    lock_retry_s: float = Field(
        default=600.0, ge=0, description="How long a write keeps retrying while another process holds the lock."
    )


class InfluxSettings(Section):
    url: str = Field(default="http://127.0.0.1:8086", description="InfluxDB base URL (1.x, 2.x or 3.x).")
    database: str = Field(default="flowwatch", description="Database (1.x) or bucket mapped by DBRP (2.x/3.x).")
    retention_policy: str | None = Field(default=None, description="Retention policy name; the default when unset.")
    token: SecretStr | None = Field(default=None, description="API token (2.x/3.x); sent as 'Token <token>'.")
    token_file: Path | None = Field(default=None, description="File holding the API token.")
    username: str | None = Field(default=None, description="User for 1.x authentication.")
    password: SecretStr | None = Field(default=None, description="Password for 1.x authentication.")
    create_database: bool = Field(default=True, description="CREATE DATABASE at start (1.x; ignored if refused).")
    batch_size: int = Field(default=50_000, ge=1, le=1_000_000, description="Points per /write request.")
    timeout_s: float = Field(default=30.0, gt=0, description="HTTP timeout per request.")
    retries: int = Field(default=8, ge=0, description="Retries with backoff on 5xx / timeouts before giving up.")
    apply_retention: bool = Field(
        default=True,
        description="At start, set the duration of the retention policy written to (retention_policy, else the database's "
        "default) to store.retention_days (1.x; 2.x/3.x keep the bucket's retention period). Turn off if the database "
        "holds other data.",
    )

    _v_tok = field_validator("token", "password")(lambda cls, v, info: check_secret(v, f"store.influxdb.{info.field_name}"))

    def secret_token(self) -> str | None:
        return read_secret(self.token, self.token_file)


class StoreSettings(Section):
    backend: Literal["sqlite", "influxdb"] = Field(default="sqlite", description="Where data is stored.")
    retention_days: int = Field(default=365, ge=1, description="Data older than this is purged daily.")
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings, description="SQLite adapter settings.")
    influxdb: InfluxSettings = Field(default_factory=InfluxSettings, description="InfluxDB adapter settings.")
    unhealthy_after_s: float = Field(
        default=120.0, gt=0,
        description="A service whose store or disk has been failing for longer than this (writes retried, nothing "
        "acknowledged; a database locked or not answering) is unhealthy (flowwatch health, the Docker healthcheck).",
    )
