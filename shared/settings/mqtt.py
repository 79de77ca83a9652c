"""``mqtt``: the broker connection every service uses."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from shared.settings.base import Section, check_secret, read_secret
from shared.topics import DEFAULT_PREFIX


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
    unhealthy_after_s: float = Field(
        default=120.0, gt=0,
        description="A service that has not been connected to the broker for longer than this is unhealthy "
        "(flowwatch health, the Docker healthcheck); it keeps running and reconnecting.",
    )

    _v_pw = field_validator("password")(lambda cls, v: check_secret(v, "mqtt.password"))

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file)
