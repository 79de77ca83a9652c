"""The one wrapper around paho-mqtt. Services never import paho themselves.

- fixed client id + persistent session (clean_session=False) + QoS 1 for data, so a service that
  restarts receives what was published while it was away (the broker queues it);
- automatic reconnect with backoff; every subscription is renewed in ``on_connect``;
- a retained last will marks the service "offline";
- ``subscribe(filter, model_cls, handler)`` validates each payload; a payload that is too large or
  does not validate is counted, logged once per reason, dead-lettered with its raw bytes, and the
  stream goes on;
- the PUBACK for an incoming QoS 1 message is sent only after the handler returned (manual ack):
  the handler's durable write is the acknowledgement point. With ``deferred_ack=True`` the handler
  receives an ``ack`` callable instead and acknowledges later (after a batched write commits). A message whose handler raised is
  dead-lettered (so one poison message cannot stall the stream) and then acknowledged.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ValidationError

from shared.counters import Counters
from shared.messages import Message, dead_letter
from shared.settings import MqttSettings
from shared.topics import Topics, check_publish_topic

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[str, Any], None]


class BusError(RuntimeError):
    pass


@dataclass
class _Subscription:
    filter: str
    model_cls: type[BaseModel] | None  # None: raw bytes are passed to the handler
    handler: Handler
    qos: int
    deferred_ack: bool = False


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
        self._subs: list[_Subscription] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
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
        self.client = c

    # --- connection -------------------------------------------------------------------------
    def connect(self, wait_s: float | None = 10.0) -> bool:
        """Start the network loop; reconnects on its own. Returns whether connected within wait_s."""
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
        """Publish ``final`` (retained status) if connected, then disconnect cleanly."""
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
        with self._lock:
            subs = list(self._subs)
        for s in subs:
            client.subscribe(s.filter, qos=s.qos)
        self.counters.inc("mqtt_connects")
        logger.info("connected to MQTT %s:%s as %s", self.settings.host, self.settings.port, self.client_id)
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
    def subscribe(
        self, filter: str, model_cls: type[M] | None, handler: Callable[..., None], *, qos: int = 1, deferred_ack: bool = False
    ) -> None:
        """Handle messages on ``filter``: ``handler(topic, model)``; ``model_cls=None`` passes raw bytes.

        ``deferred_ack=True``: the handler is called as ``handler(topic, model, ack)`` and the PUBACK
        is sent only when it calls ``ack()`` (from any thread), e.g. after a batch it queued was
        written. A payload that does not validate, or a handler that raises, is still dead-lettered
        and acknowledged at once. Keep the number of unacknowledged messages under the broker's
        ``max_inflight_messages`` or delivery pauses until some are acknowledged.
        """
        sub = _Subscription(filter, model_cls, handler, qos, deferred_ack)
        with self._lock:
            self._subs.append(sub)
        if self.connected:
            self.client.subscribe(filter, qos=qos)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        deferred = False
        try:
            deferred = self._dispatch(msg)
        finally:
            if msg.qos > 0 and not deferred:
                client.ack(msg.mid, msg.qos)

    def _ack_later(self, msg: mqtt.MQTTMessage) -> Callable[[], None]:
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if qos > 0:
                self.client.ack(mid, qos)

        return ack

    def _dispatch(self, msg: mqtt.MQTTMessage) -> bool:
        """Validate and hand over; True when the handler took over the acknowledgement."""
        self.counters.inc("received")
        sub = next((s for s in self._subs if mqtt.topic_matches_sub(s.filter, msg.topic)), None)
        if sub is None:  # cannot happen for services: they subscribe before connecting (Service.start)
            self.counters.inc("unrouted")
            logger.warning("message on %s matches no subscription of %s; dropped", msg.topic, self.service)
            return False
        payload = msg.payload
        if len(payload) > self.settings.max_payload_bytes:
            self.counters.inc("rejected")
            self.dead_letter(msg.topic, f"oversized: {len(payload)} bytes > mqtt.max_payload_bytes={self.settings.max_payload_bytes}", payload)
            return False
        if sub.model_cls is None:
            obj: Any = payload
        else:
            try:
                obj = sub.model_cls.model_validate_json(payload)
            except ValidationError as exc:
                self.counters.inc("rejected")
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"]) or "payload"
                self.dead_letter(msg.topic, f"invalid {sub.model_cls.__name__}: {loc}: {first['msg']} ({exc.error_count()} error(s))", payload)
                return False
        try:
            if sub.deferred_ack:
                sub.handler(msg.topic, obj, self._ack_later(msg))
            else:
                sub.handler(msg.topic, obj)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stream
            self.counters.inc("handler_errors")
            logger.exception("handler for %s failed", msg.topic)
            self.dead_letter(msg.topic, f"handler error: {type(exc).__name__}: {exc}", payload)
            return False
        self.counters.inc("handled")
        return sub.deferred_ack
