"""``broker``: the box's own Mosquitto as ``flowwatch up`` runs it (TLS listener for the LAN)."""

from __future__ import annotations

from pydantic import Field

from shared.settings.base import Section


class BrokerSettings(Section):
    tls: bool = Field(
        default=True,
        description="Open the LAN listener, with TLS: a CA and a server certificate are generated on first start "
        "(<data_dir>/secrets/tls; clients trust ca.crt). Plain MQTT is served on loopback only (mqtt.host/mqtt.port).",
    )
    tls_bind: str = Field(default="0.0.0.0", description="Address of the TLS listener (0.0.0.0: every interface).")
    tls_port: int = Field(default=8883, ge=1, le=65535, description="Port of the TLS listener.")
    cert_names: list[str] = Field(
        default_factory=list,
        description="More names or addresses for the server certificate (the box's LAN address or DNS name, as "
        "devices connect to it); localhost, 127.0.0.1, 'mosquitto' and the host name are always in it.",
    )
