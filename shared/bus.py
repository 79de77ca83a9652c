"""The one wrapper around paho-mqtt. Services never import paho themselves.

- fixed client id + persistent session (clean_session=False) + QoS 1 for data, so a service that
  restarts receives what was published while it was away (the broker queues it);
- automatic reconnect with backoff; every subscription is renewed in ``on_connect``;
- a retained last will marks the service "offline";
- ``subscribe(filter, model_cls, handler)`` routes a topic to a handler in the bus's inbox
  (:mod:`shared.inbox`): paho's network thread only enqueues; one worker validates, calls the
  handler, and sends the PUBACK (manual ack) when it returned, so the handler's durable write is
  the acknowledgement point. A message at fault is dead-lettered with its raw bytes and acked; an
  infrastructure fault is retried, never dead-lettered.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from shared.counters import Counters
from shared.inbox import Delivery, Inbox
from shared.messages import Message, dead_letter
from shared.settings import MqttSettings
from shared.topics import Topics, check_publish_topic

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[str, Any], None]


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on each new connection: a PUBACK, a receipt or a reading goes out at once instead
    of waiting (Nagle's algorithm) for the peer's delayed ACK of the previous small packet, up to
    40 ms. The collector -> detector chain is a string of such small hand-offs (issue 15: about 3x
    its throughput)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket: nothing to tune
        pass


class BusError(RuntimeError):
    pass


class Bus:
    """A connected MQTT client for one service."""

    def __init__(
        self,
        settings: MqttSettings,
        service: str,
        *,
        client_id: str | None = None,
        counters: Counters | None = None,
        will: Message | None = None,
        persistent: bool = True,
    ) -> None:
        self.settings = settings
        self.service = service
        self.topics = Topics(settings.topic_prefix)
        self.counters = counters if counters is not None else Counters()
        self.client_id = client_id or f"{settings.client_id_prefix}-{service}"
        self.inbox = Inbox(self, self.counters)
        self._connected = threading.Event()
        # Wall-clock time since which the bus has not been connected (from its creation until the first
        # connect, and from each lost connection); None while connected. The health check reads it.
        self.down_since: float | None = time.time()
        self._logged_reasons: set[tuple[str, str]] = set()
        self.on_connected: Callable[[], None] | None = None
        self.on_published: Callable[[int], None] | None = None
        # Called in the network thread after the connection was lost (before any reconnect).
        self.on_disconnected: Callable[[], None] | None = None

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)  # paho's own queue is unbounded; durability is the caller's spool
        c.reconnect_delay_set(min_delay=max(1, int(settings.reconnect_min_s)), max_delay=int(settings.reconnect_max_s))
        if settings.username:
            c.username_pw_set(settings.username, settings.secret())
        if settings.tls:
            c.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will is not None:
            c.will_set(self.topics.status(service), will.to_json(), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_socket_open = _no_delay
        self.client = c

    # --- connection -------------------------------------------------------------------------
    def connect(self, wait_s: float | None = 10.0) -> bool:
        """Start the network loop; reconnects on its own. Returns whether connected within wait_s."""
        self.inbox.start(self.service)
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self.client.loop_start()
        if wait_s is None:
            return self._connected.is_set()
        ok = self._connected.wait(wait_s)
        if not ok:
            logger.warning(
                "not connected to MQTT broker %s:%s after %.0fs; still trying (check mqtt.host / mqtt.port / credentials)",
                self.settings.host, self.settings.port, wait_s,
            )
        return ok

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self, final: Message | None = None) -> None:
        """Finish the inbox's current work, publish ``final`` (retained status) if connected, disconnect."""
        self.inbox.stop()
        try:
            if final is not None and self.connected:
                info = self.client.publish(self.topics.status(self.service), final.to_json(), qos=1, retain=True)
                info.wait_for_publish(timeout=2)
        except (RuntimeError, ValueError) as exc:
            logger.debug("final status not sent: %s", exc)
        self._connected.clear()  # a requested disconnect is not "lost, reconnecting"
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.counters.inc("mqtt_connect_refused")
            logger.error(
                "MQTT broker %s:%s refused %s: %s (check mqtt.username / mqtt.password_file)",
                self.settings.host, self.settings.port, self.client_id, reason_code,
            )
            return
        for r in list(self.inbox.routes):
            client.subscribe(r.filter, qos=r.qos)
        self.counters.inc("mqtt_connects")
        logger.info("connected to MQTT %s:%s as %s", self.settings.host, self.settings.port, self.client_id)
        self.down_since = None
        self._connected.set()
        if self.on_connected is not None:
            try:
                self.on_connected()
            except Exception:  # noqa: BLE001 - a callback bug must not kill the network thread
                logger.exception("on_connected callback failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connected.is_set():
            logger.warning("disconnected from MQTT broker (%s); reconnecting", reason_code)
            self.counters.inc("mqtt_disconnects")
        if self.down_since is None:
            self.down_since = time.time()
        self._connected.clear()
        if self.on_disconnected is not None:
            try:
                self.on_disconnected()
            except Exception:  # noqa: BLE001 - a callback bug must not kill the network thread
                logger.exception("on_disconnected callback failed")

    # --- publishing -------------------------------------------------------------------------
    def publish(self, topic: str, payload: Message | bytes, *, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        check_publish_topic(topic)
        data = payload.to_json() if isinstance(payload, Message) else payload
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        self.counters.inc("published")
        return info

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if self.on_published is not None:
            self.on_published(mid)

    def dead_letter(self, topic: str, reason: str, payload: bytes) -> None:
        """Count, log once per reason, and publish the raw payload to the dead-letter topic."""
        self.counters.inc("dead_lettered")
        key = (topic.rsplit("/", 1)[-1], reason.split(":", 1)[0][:80])
        if key not in self._logged_reasons:
            self._logged_reasons.add(key)
            logger.warning("dead-lettered a message on %s: %s (further ones with this reason are counted, not logged)", topic, reason)
        else:
            logger.debug("dead-lettered a message on %s: %s", topic, reason)
        try:
            self.client.publish(self.topics.deadletter(self.service), dead_letter(self.service, topic, reason, payload).to_json(), qos=1)
        except (RuntimeError, ValueError) as exc:  # never let dead-lettering crash the stream
            logger.error("could not publish dead letter: %s", exc)

    # --- subscribing ------------------------------------------------------------------------
    def subscribe(self, filter: str, model_cls: type[M] | None, handler: Callable[[str, Any], None] | None, *, qos: int = 1) -> None:
        """Handle messages on ``filter`` in the inbox worker: ``handler(topic, model)``.

        ``model_cls=None`` passes the raw bytes. The PUBACK is sent when the handler returns; a
        message at fault is dead-lettered and acknowledged; an infrastructure error is retried
        (see :mod:`shared.inbox`). ``handler=None``: only the inbox's batch handler sees them.
        """
        self.inbox.route(filter, model_cls, handler, qos)
        if self.connected:
            self.client.subscribe(filter, qos=qos)

    def ack(self, mid: int, qos: int) -> None:
        """Send the PUBACK of an incoming QoS 1 message (from the inbox worker)."""
        self.client.ack(mid, qos)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # The network thread only enqueues: validation, handlers and acks run in the inbox worker.
        self.inbox.put(Delivery(msg.topic, msg.payload, msg.qos, msg.mid))
