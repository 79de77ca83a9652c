"""The top level of the configuration: ``Settings`` and how it is loaded from a file and the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from shared.eventtime import DaysOff
from shared.messages import Ident
from shared.settings.base import ENV_PREFIX
from shared.settings.broker import BrokerSettings
from shared.settings.central import CentralSettings
from shared.settings.collector import SECTION_OF, CollectorSettings, MeterSource, meter_source
from shared.settings.detector import DetectorSettings
from shared.settings.exporter import ExporterSettings
from shared.settings.forecaster import ForecasterSettings
from shared.settings.limits import RangeLimits
from shared.settings.meters import METER_LIMITS, MeterSettings
from shared.settings.modelstore import ModelStoreSettings
from shared.settings.mqtt import MqttSettings
from shared.settings.notifier import NotifierSettings
from shared.settings.store import StoreSettings
from shared.settings.trainer import TrainerSettings
from shared.topics import LEVEL_MAX_LENGTH

CONFIG_ENV = "FLOWWATCH_CONFIG"
_IDENT = f"1 to {LEVEL_MAX_LENGTH} letters, digits, '_', '.', '-' (one MQTT topic level, the same rule as every message)"


class Settings(BaseModel):
    """Top-level flowwatch configuration: built by :func:`load_settings` from the file and the
    environment (``FLOWWATCH_*``, read by pydantic-settings); ``Settings(...)`` alone reads neither."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    site: Ident = Field(default="site1", description=f"Site id of this installation: {_IDENT}.")
    meter: Ident = Field(
        default="meter1",
        description=f"Meter id of the attached meter when `meters` is not given: {_IDENT}. With `meters`, the first meter's id.",
    )
    meters: list[MeterSettings] = Field(
        default_factory=list,
        description="The meters of this box, each with its id, signals and interval (see docs/meters.md); "
        "one meter named by `meter`, with both signals at collector.interval_s, when empty.",
    )
    timezone: str = Field(default="Asia/Seoul", description="Local zone for day, hour and night-window boundaries.")
    holidays: str = Field(
        default="auto",
        description="Public holidays, which the detector and the forecasts' seasonal naive treat as weekend days (demand on "
        "them follows a Sunday's): `auto` (the country of `timezone`: Asia/Seoul -> KR; none for UTC), an ISO 3166 "
        "country code with an optional subdivision (`KR`, `US-CA`), or `none`.",
    )
    days_off: list[date] = Field(
        default_factory=list,
        description="Further local dates treated as days off (a local festival, a factory's shutdown), e.g. [2026-05-11].",
    )
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
    notifier: NotifierSettings = Field(default_factory=NotifierSettings, description="Notifier service: alerts to people.")
    models: ModelStoreSettings = Field(
        default_factory=ModelStoreSettings, description="Model store: written by the trainer, served by the forecaster."
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="The box's broker under `flowwatch up`: TLS listener.")
    central: CentralSettings = Field(default_factory=CentralSettings, description="Bridge to the central broker (off by default).")

    _sources: dict[str, MeterSource] = PrivateAttr(default_factory=dict)
    _limits: dict[str, RangeLimits] = PrivateAttr(default_factory=dict)  # meters with limits of their own

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'Asia/Seoul' or 'UTC'") from None
        return v

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, v: str, info: ValidationInfo) -> str:
        if v.strip().lower() in ("auto", "none", ""):
            return v  # auto: a zone's country, every one of which has a calendar; built on first use (Settings.calendar)
        try:  # a code written by hand is checked now (it loads the holidays package: ~65 ms)
            DaysOff.from_setting(v, info.data.get("timezone", "UTC"))
        except ValueError as e:
            raise ValueError(str(e).removeprefix("holidays: ")) from None
        return v

    @model_validator(mode="after")
    def _horizon_in_steps(self) -> Settings:
        if self.forecaster.horizon_minutes % self.models.step_minutes:
            raise ValueError(
                f"forecaster.horizon_minutes ({self.forecaster.horizon_minutes}) must be a multiple of "
                f"models.step_minutes ({self.models.step_minutes})"
            )
        return self

    @model_validator(mode="after")
    def _meter_list(self) -> Settings:
        listed = bool(self.meters)  # errors name meters[i] when the meters are listed, collector.* otherwise
        if not self.meters:
            self.__dict__["meters"] = [MeterSettings(id=self.meter)]
        ids = [m.id for m in self.meters]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"meters: id {twice[0]!r} is listed twice; every meter needs its own id")
        if len(ids) > self.limits.max_meters_per_site:
            raise ValueError(f"meters: {len(ids)} meters exceed limits.max_meters_per_site ({self.limits.max_meters_per_site})")
        self.__dict__["meter"] = ids[0]
        sources: dict[str, MeterSource] = {}
        for i, m in enumerate(self.meters):
            kind = m.source or self.collector.source
            where = f"meters[{i}] ({m.id})" if listed else "collector"
            src = meter_source(self.collector, kind, getattr(m, SECTION_OF[kind]), where, i)
            if kind.startswith("modbus"):
                have = {r.name for r in src.cfg.registers}
                missing = [sig for sig in m.signals if sig not in have]
                if missing:
                    raise ValueError(
                        f"{where}: signal {missing[0]!r} has no register in the Modbus map (modbus.registers); "
                        f"add one named {missing[0]!r}" + (f" or drop it from meters[{i}].signals" if listed else " or list the meter under meters with its signals")
                    )
            if kind == "serial":
                missing = [sig for sig in m.signals if getattr(src.cfg.frame, sig) is None]
                if missing:
                    raise ValueError(f"{where}: signal {missing[0]!r} has no field in the serial frame (serial.frame.{missing[0]} is null)")
            sources[m.id] = src
        _check_shared_ports(sources)
        self._sources = sources
        self._limits = {m.id: _meter_limits(self.limits, m.limits, f"meters[{i}] ({m.id})", i)
                        for i, m in enumerate(self.meters) if m.limits}
        return self

    def meter_source(self, meter: str) -> MeterSource:
        """Where the collector reads a meter: its source kind and section (collector's, with the
        meter's own keys merged over it)."""
        src = self._sources.get(meter)
        return src if src is not None else meter_source(self.collector, self.collector.source, None, "collector")

    def meter_spec(self, meter: str) -> MeterSettings:
        """The configuration of one meter: its entry in `meters`, or the defaults for a meter not
        configured here (both signals, collector.interval_s)."""
        for m in self.meters:
            if m.id == meter:
                return m
        return MeterSettings(id=meter)

    def limits_of(self, meter: str) -> RangeLimits:
        """The physical ranges a reading of ``meter`` is judged against: `limits` with the meter's own
        keys (meters[].limits) merged over it; `limits` for a meter without any or not configured here."""
        return self._limits.get(meter, self.limits)

    def interval_of(self, meter: str) -> int:
        """Seconds between a meter's readings."""
        return self.meter_spec(meter).interval_s or self.collector.interval_s

    @property
    def meter_ids(self) -> list[str]:
        return [m.id for m in self.meters]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def calendar(self) -> DaysOff:
        """Which local dates are days off (weekends, `holidays`, `days_off`): shared.eventtime.DaysOff,
        one per setting in a process (built on first use, so loading the settings stays cheap)."""
        return DaysOff.from_setting(self.holidays, self.timezone, self.days_off)

    def path(self, p: Path) -> Path:
        """A configured path, resolved under data_dir when relative."""
        return p if p.is_absolute() else self.data_dir / p

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets shown as '**********'."""
        return self.model_dump(mode="json")  # SecretStr dumps masked in json mode


def _meter_limits(box: RangeLimits, own: dict[str, float], where: str, index: int) -> RangeLimits:
    """``limits`` with a meter's own range keys merged over it, validated. Only the signal ranges may
    differ per meter: the time windows and max_meters_per_site are the box's."""
    for key in own:
        if key not in METER_LIMITS:
            what = "is box-wide: set it under limits" if key in RangeLimits.model_fields else "is not a key of limits"
            raise ValueError(f"meters[{index}].limits.{key} {what}; a meter may set only {', '.join(METER_LIMITS)}")
    try:
        return RangeLimits.model_validate({**box.model_dump(), **own})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(section)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{where}: its limits keys merged over limits are not valid: {problems}") from None


def _check_shared_ports(sources: dict[str, MeterSource]) -> None:
    """Meters may share a serial port only as Modbus RTU units with unit ids of their own (one RS485
    bus, polled in turn), and a Modbus TCP address only with unit ids of their own (a gateway)."""
    ports: dict[str, tuple[str, str]] = {}  # port -> (kind, first meter)
    units: dict[tuple, str] = {}
    for meter, src in sources.items():
        cfg = src.cfg
        if src.kind in ("serial", "modbus-rtu"):
            first = ports.setdefault(cfg.port, (src.kind, meter))
            if first[1] != meter and (src.kind == "serial" or first[0] == "serial"):
                raise ValueError(f"meters {first[1]!r} and {meter!r} both use serial port {cfg.port}; only Modbus RTU "
                                 "meters (each with its own modbus.unit_id) can share a port")
        if src.kind.startswith("modbus"):
            key = (cfg.port,) if src.kind == "modbus-rtu" else (cfg.host, cfg.tcp_port)
            other = units.setdefault((*key, cfg.unit_id), meter)
            if other != meter:
                raise ValueError(f"meters {other!r} and {meter!r} are both unit {cfg.unit_id} at {':'.join(map(str, key))}; "
                                 "give each its own modbus.unit_id")


class ConfigFileError(ValueError):
    pass


MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a flowwatch config is a few KiB


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping of a YAML config file; ``ConfigFileError`` naming the file (and the line) if it is
    not one: unreadable, larger than ``MAX_CONFIG_BYTES``, not YAML, a key given twice, nested
    deeper than ``yamlfile.MAX_CONFIG_DEPTH``, or not a mapping of setting names."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path} is larger than {MAX_CONFIG_BYTES:,} bytes (1 MiB), the most a config file may be; a flowwatch config is a few KiB")
    import yaml  # here, not at the top: a command without a config file does not load PyYAML

    from shared.settings.yamlfile import ConfigLoader, ConfigYamlError

    try:
        data = yaml.load(raw, Loader=ConfigLoader) if raw.strip() else {}  # ConfigLoader is a SafeLoader
    except ConfigYamlError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:  # e.g. '?' or '1: x' in YAML: a key that is empty or a number
        raise ConfigFileError(f"{path}: every top-level key must be a setting name (text), not {bad[0]!r}; see docs/configuration.md")
    return data


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a YAML file (or $FLOWWATCH_CONFIG) and the environment.

    Raises ``pydantic.ValidationError`` or ``ConfigFileError``.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data = read_config_file(Path(path)) if path else {}
    data.update(overrides)
    return Settings(**_merged(data, env_overrides()))  # the environment wins over the file and the overrides


def _merged(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, section by section (``over`` wins)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def env_overrides() -> dict[str, Any]:
    """The settings the ``FLOWWATCH_*`` environment variables give, as nested data (``FLOWWATCH_MQTT__HOST``
    -> ``{"mqtt": {"host": ...}}``; a list or a section as JSON; an empty variable is unset). Read by
    pydantic-settings, which is only loaded when there is such a variable: it is a third of a
    command's start (docs/benchmarks.md, Import)."""
    if not any(k.upper().startswith(ENV_PREFIX) and k.upper() != CONFIG_ENV for k in os.environ):
        return {}
    from pydantic_settings import EnvSettingsSource, SettingsError

    source = EnvSettingsSource(Settings, case_sensitive=False, env_prefix=ENV_PREFIX, env_nested_delimiter="__",  # type: ignore[arg-type]
                               env_ignore_empty=True)  # FLOWWATCH_X= (compose's ${VAR:-} when .env leaves it out) means unset
    try:
        return source()
    except SettingsError as exc:  # a list or a section that is not JSON: name the variable
        raise ConfigFileError(f"{_bad_json_variable(str(exc))} is not valid: {exc.__cause__ or exc}; a list or a section is "
                              f"given as JSON, e.g. {ENV_PREFIX}METERS='[{{\"id\": \"m1\"}}]'") from None


def _bad_json_variable(error: str) -> str:
    """The ``FLOWWATCH_*`` variable(s) behind pydantic-settings' 'error parsing value for field "x"':
    those under that top-level key whose value looks like JSON and is not."""
    import json

    field = error.split('"')[1].upper() if error.count('"') >= 2 else ""
    under = [k for k in os.environ if field and (k.upper() == ENV_PREFIX + field or k.upper().startswith(f"{ENV_PREFIX}{field}__"))]

    def bad(value: str) -> bool:
        try:
            json.loads(value)
        except ValueError:
            return value.lstrip()[:1] in ("[", "{")
        return False

    names = sorted(k for k in under if bad(os.environ[k])) or sorted(under)
    return ", ".join(names) or f"a {ENV_PREFIX}* variable"


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
