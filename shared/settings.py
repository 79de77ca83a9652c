"""Configuration: one YAML file plus ``FLOWWATCH_*`` environment overrides.

Nested keys use ``__`` in the environment: ``FLOWWATCH_MQTT__HOST=broker`` sets ``mqtt.host``.
The environment wins over the file. Every model refuses unknown keys, so a typo is an error.

There is no settings singleton: ``load_settings()`` is called in ``main()`` and the result is
passed down, so tests build their own. ``flowwatch config check`` validates a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.topics import DEFAULT_PREFIX

ENV_PREFIX = "FLOWWATCH_"
CONFIG_ENV = "FLOWWATCH_CONFIG"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "secret", "admin", "flowwatch", "token"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_secret(value: SecretStr | None, name: str) -> SecretStr | None:
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError(
            f"{name} is a placeholder; leave it unset so flowwatch generates one on first start, "
            "or set a real secret"
        )
    return value


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given directly, or read from a file (Docker secrets), or None."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read secret file {file}: {exc}") from exc
    return None


class MqttSettings(Section):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    username: str | None = Field(default=None, description="MQTT user; one per service in production.")
    password: SecretStr | None = Field(default=None, description="MQTT password (prefer password_file).")
    password_file: Path | None = Field(default=None, description="File holding the MQTT password.")
    tls: bool = Field(default=False, description="Connect with TLS.")
    ca_file: Path | None = Field(default=None, description="CA certificate for TLS; system CAs when unset.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    topic_prefix: str = Field(default=DEFAULT_PREFIX, description="First topic levels of every topic.")
    client_id_prefix: str = Field(
        default="flowwatch", description="Client ids are '<prefix>-<service>'; fixed so sessions persist."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay (backoff cap).")
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger incoming payloads are dead-lettered unparsed."
    )

    _v_pw = field_validator("password")(lambda cls, v: _check_secret(v, "mqtt.password"))

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file)


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

    _v_tok = field_validator("token", "password")(lambda cls, v, info: _check_secret(v, f"store.influxdb.{info.field_name}"))

    def secret_token(self) -> str | None:
        return read_secret(self.token, self.token_file)


class StoreSettings(Section):
    backend: Literal["sqlite", "influxdb"] = Field(default="sqlite", description="Where data is stored.")
    retention_days: int = Field(default=365, ge=1, description="Data older than this is purged daily.")
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings, description="SQLite adapter settings.")
    influxdb: InfluxSettings = Field(default_factory=InfluxSettings, description="InfluxDB adapter settings.")


class RangeLimits(Section):
    flow_rate_min: float = Field(default=0.0, description="Lowest physically valid flow rate (m³/h).")
    flow_rate_max: float = Field(default=2000.0, description="Highest physically valid flow rate (m³/h).")
    pressure_min: float = Field(default=0.0, description="Lowest physically valid pressure (bar).")
    pressure_max: float = Field(default=16.0, description="Highest physically valid pressure (bar).")

    @model_validator(mode="after")
    def _ordered(self) -> RangeLimits:
        if self.flow_rate_min >= self.flow_rate_max:
            raise ValueError("flow_rate_min must be below flow_rate_max")
        if self.pressure_min >= self.pressure_max:
            raise ValueError("pressure_min must be below pressure_max")
        return self


class CollectorSettings(Section):
    source: Literal["simulator", "serial", "modbus-rtu", "modbus-tcp", "replay"] = Field(
        default="simulator", description="Where readings come from; the simulator when no meter is attached."
    )
    interval_s: int = Field(default=60, ge=1, le=3600, description="Seconds between readings (event time).")
    speed: float = Field(default=1.0, gt=0, description="Event time runs this many times faster than wall time (simulator, replay).")
    spool_max_rows: int = Field(default=1_000_000, ge=100, description="Disk spool bound (readings) while the broker is away.")
    options: dict[str, Any] = Field(default_factory=dict, description="Source-specific options (see docs/configuration.md).")


class DetectorSettings(Section):
    options: dict[str, Any] = Field(default_factory=dict, description="Rule parameters (see docs/configuration.md).")


class ForecasterSettings(Section):
    step_minutes: int = Field(default=10, ge=1, le=1440, description="Forecast resolution in minutes.")
    horizon_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60, description="How far ahead to forecast (up to 7 days).")
    max_gap_minutes: int = Field(
        default=60, ge=0, le=24 * 60,
        description="Gaps up to this long are filled (linear; carried forward at the end); longer ones make "
        "the model fall back to seasonal naive. The trainer cleans its data the same way.",
    )
    threads: int = Field(default=1, ge=1, le=64, description="CPU threads of the LiteRT interpreter.")

    @model_validator(mode="after")
    def _divides(self) -> ForecasterSettings:
        if self.horizon_minutes % self.step_minutes:
            raise ValueError("horizon_minutes must be a multiple of step_minutes")
        return self


class ExporterSettings(Section):
    out_dir: Path = Field(default=Path("exports"), description="Folder of alert.txt / server.txt; relative to data_dir.")
    archive_days: int = Field(default=90, ge=1, description="Daily archives older than this are removed.")
    archive: bool = Field(default=True, description="Write the daily archive (previous day's readings, anomalies, forecasts as CSV).")
    archive_dir: Path = Field(
        default=Path("exports/archive"), description="Folder of the date-partitioned daily archive; relative to data_dir."
    )
    archive_lag_minutes: int = Field(
        default=5, ge=0, le=720,
        description="Archive day D once event time reaches D+1 00:00 local plus this, so its last minutes are stored.",
    )
    mirror: bool = Field(default=True, description="Also publish each file's content retained on .../export/alert and .../export/server.")
    backfill_anomaly_days: int = Field(
        default=30, ge=1, description="At start, anomalies that started this many days before the last reading are read back from the store."
    )


class TrainerSettings(Section):
    first_training_days: float = Field(default=14, gt=0, description="Train first once this many days of data exist.")
    period: Literal["month", "quarter", "year"] = Field(default="year", description="Retrain when event time crosses this boundary.")
    max_days: int = Field(default=365, ge=1, description="Train on at most this many days of data.")
    threads: int = Field(default=1, ge=1, description="CPU threads TensorFlow may use.")
    nice: int = Field(default=10, ge=0, le=19, description="CPU priority decrease while training.")
    epochs: int = Field(default=20, ge=1, description="Most epochs (early stopping may end sooner).")
    models_dir: Path = Field(
        default=Path("models"), description="Model versions (models/<signal>/<version>/); relative to data_dir. The forecaster reads them."
    )
    window_steps: int = Field(default=36, ge=2, le=1008, description="Past bins (at forecaster.step_minutes) the model sees.")
    max_output_steps: int = Field(
        default=36, ge=1, le=1008,
        description="Most steps the model outputs at once; longer forecaster horizons are rolled forward.",
    )
    units: int = Field(default=32, ge=1, le=512, description="LSTM units.")
    batch_size: int = Field(default=256, ge=1, description="Largest training batch (smaller on little data, for >= ~64 updates per epoch); the exported model runs batch 1.")
    patience: int = Field(default=3, ge=1, description="Early stopping: epochs without validation improvement.")
    learning_rate: float = Field(default=0.003, gt=0, description="Adam learning rate.")
    validation_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="Last part of the training period used for early stopping (time-ordered)."
    )
    holdout_days: float = Field(
        default=7, gt=0, description="Last days held out for the promotion test (at most 30 % of the data)."
    )
    min_improvement: float = Field(
        default=0.0, ge=0, lt=1,
        description="Relative held-out WAPE improvement a new model needs over seasonal naive and the current model.",
    )
    parity_tolerance: float = Field(
        default=1e-3, gt=0, description="Largest allowed |LiteRT - Keras| output difference (scaled units) on held-out windows."
    )
    seed: int = Field(default=42, description="Random seed (numpy, Python, TensorFlow) for reproducible training.")


class Settings(BaseSettings):
    """Top-level flowwatch configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    site: str = Field(default="site1", pattern=r"^[A-Za-z0-9_.-]+$", description="Site id of this installation.")
    meter: str = Field(default="meter1", pattern=r"^[A-Za-z0-9_.-]+$", description="Meter id of the attached meter.")
    timezone: str = Field(default="Asia/Seoul", description="Local zone for day, hour and night-window boundaries.")
    data_dir: Path = Field(default=Path("var"), description="Folder for the database, spool, models and exports.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    limits: RangeLimits = Field(default_factory=RangeLimits, description="Physical validity limits.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Storage backend.")
    collector: CollectorSettings = Field(default_factory=CollectorSettings, description="Collector service.")
    detector: DetectorSettings = Field(default_factory=DetectorSettings, description="Detector service.")
    forecaster: ForecasterSettings = Field(default_factory=ForecasterSettings, description="Forecaster service.")
    exporter: ExporterSettings = Field(default_factory=ExporterSettings, description="Exporter service.")
    trainer: TrainerSettings = Field(default_factory=TrainerSettings, description="Trainer service.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'Asia/Seoul' or 'UTC'") from None
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the config file (passed as init kwargs).
        return env_settings, init_settings, file_secret_settings

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def path(self, p: Path) -> Path:
        """A configured path, resolved under data_dir when relative."""
        return p if p.is_absolute() else self.data_dir / p

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets shown as '**********'."""
        return self.model_dump(mode="json")  # SecretStr dumps masked in json mode


class ConfigFileError(ValueError):
    pass


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a YAML file (or $FLOWWATCH_CONFIG) and the environment.

    Raises ``pydantic.ValidationError`` or ``ConfigFileError``.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data = read_config_file(Path(path)) if path else {}
    data.update(overrides)
    return Settings(**data)


def format_errors(exc: Exception) -> list[str]:
    """One line per error: ``key.path: reason``."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see docs/configuration.md)"
            lines.append(f"{loc}: {msg}")
        return lines
    return [str(exc)]
