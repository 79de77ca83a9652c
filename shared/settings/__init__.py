"""Configuration: one YAML file plus ``FLOWWATCH_*`` environment overrides.

Nested keys use ``__`` in the environment: ``FLOWWATCH_MQTT__HOST=broker`` sets ``mqtt.host``.
The environment wins over the file. Every model refuses unknown keys, so a typo is an error.

There is no settings singleton: ``load_settings()`` is called in ``main()`` and the result is
passed down, so tests build their own. ``flowwatch config check`` validates a file.

One module per section (``mqtt``, ``store``, ``limits``, ``collector``, ``detector``,
``forecaster``, ``exporter``, ``trainer``; ``models`` in :mod:`.modelstore`); the top level and
loading are in :mod:`.root`.
Import from here: ``from shared.settings import Settings, MqttSettings``.
"""

from shared.settings.base import ENV_PREFIX, PLACEHOLDER_SECRETS, Section, check_secret, env_name, read_secret
from shared.settings.broker import BrokerSettings
from shared.settings.central import CentralSettings
from shared.settings.collector import (
    ChecksumSettings,
    CollectorSettings,
    FrameField,
    FrameFormat,
    ModbusSettings,
    RegisterSpec,
    ReplaySettings,
    SerialSettings,
    SimEvent,
    SimulatorSettings,
)
from shared.settings.detector import DetectorSettings
from shared.settings.exporter import ExporterSettings
from shared.settings.forecaster import ForecasterSettings
from shared.settings.limits import RangeLimits
from shared.settings.meters import SIGNALS, MeterSettings
from shared.settings.modelstore import ModelStoreSettings
from shared.settings.mqtt import MqttSettings
from shared.settings.notifier import NotifierSettings
from shared.settings.root import CONFIG_ENV, ConfigFileError, Settings, format_errors, load_settings, read_config_file
from shared.settings.store import InfluxSettings, SqliteSettings, StoreSettings
from shared.settings.trainer import TrainerSettings

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PLACEHOLDER_SECRETS",
    "BrokerSettings",
    "CentralSettings",
    "ChecksumSettings",
    "CollectorSettings",
    "ConfigFileError",
    "DetectorSettings",
    "ExporterSettings",
    "ForecasterSettings",
    "FrameField",
    "FrameFormat",
    "InfluxSettings",
    "MeterSettings",
    "ModbusSettings",
    "ModelStoreSettings",
    "MqttSettings",
    "NotifierSettings",
    "RangeLimits",
    "RegisterSpec",
    "ReplaySettings",
    "Section",
    "SerialSettings",
    "Settings",
    "SIGNALS",
    "SimEvent",
    "SimulatorSettings",
    "SqliteSettings",
    "StoreSettings",
    "TrainerSettings",
    "check_secret",
    "env_name",
    "format_errors",
    "load_settings",
    "read_config_file",
    "read_secret",
]
