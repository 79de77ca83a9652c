"""The inbox: every message a service receives is handled here, off paho's network thread.

    paho network thread            inbox worker (one thread per bus)
    ───────────────────            ─────────────────────────────────────────────────────────────
    on_message → put(delivery) ──► take a batch → validate → handler(s) → ack (PUBACK) each
                                        │ fault in the message ──► dead-letter (raw bytes, reason), ack
                                        └ fault in the infrastructure ──► no ack, retry with backoff

Rules:
- **Order:** one worker takes the messages in the order the broker delivered them.
- **A fault in the message** — it is too large, it does not validate, its site/meter is not the
  meter of its topic, or the handler raises
  anything but an infrastructure error on its content (a rule that chokes on a year-9999
  timestamp, a value it cannot place) — is counted, logged once per reason, dead-lettered with
  the raw bytes and the reason, and acknowledged: the stream goes on.
- **A fault in the infrastructure** (``INFRA_ERRORS``: the store unavailable or refusing a write,
  a disk error) is never the message's fault: nothing is dead-lettered, nothing is acknowledged;
  the same work is retried with backoff until it succeeds or the service stops. A message left
  unacknowledged at a stop is redelivered by the broker to the persistent session. Handlers that
  change state before their I/O wrap the I/O in :meth:`Inbox.retry` so a retry does not redo the
  state change (the forecaster's hour boundary is crossed once).
- **Batches:** a bus may set a batch handler (the detector: run the rules on every message of the
  batch, then one store transaction); it receives up to ``batch_max`` validated deliveries and
  dead-letters a single one with :meth:`Inbox.reject` or :meth:`Inbox.guard`. The batch is
  acknowledged when it returns.
- **Bounds:** QoS 1 deliveries are bounded by the broker's ``max_inflight_messages`` (100 in
  mosquitto/mosquitto.conf): the broker sends no more until some are acknowledged, so they are
  never dropped here. QoS 0 deliveries (status, best effort) beyond ``max_qos0`` are dropped and
  counted (``inbox_dropped``).
- **Ticks:** ``on_tick`` runs in the worker every ``tick_s`` (wall clock): liveness checks that
  must not race the handlers (the detector's silent-meter check) run there without a lock.

The network thread only enqueues; it never validates, writes or waits on a lock a handler holds,
so a store locked for a minute does not stop the keepalive and the broker keeps the session.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from paho.mqtt.client import topic_matches_sub
from pydantic import BaseModel, ValidationError

from shared.counters import Counters
from shared.messages import MeterMessage
from shared.store.base import StoreError

if TYPE_CHECKING:
    from shared.bus import Bus

logger = logging.getLogger(__name__)

T = TypeVar("T")

INFRA_ERRORS: tuple[type[BaseException], ...] = (StoreError, OSError)
RETRY_MIN_S = 0.2
RETRY_MAX_S = 10.0
MAX_QOS0 = 10_000
MAX_CACHED_TOPICS = 100_000  # topics remembered by match(); past it the cache starts again


class Stopping(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The service stops while work is being retried: leave the message unacknowledged."""


class MessageFault(ValueError):
    """A handler's explicit verdict that a message cannot be handled (its content is at fault)."""


@dataclass
class Route:
    filter: str
    model_cls: type[BaseModel] | None  # None: the raw bytes are passed on
    handler: Callable[[str, Any], None] | None  # None: only the batch handler sees these messages
    qos: int = 1


@dataclass
class Delivery:
    """One received message on its way through the inbox."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    route: Route | None = None
    obj: Any = None
    done: bool = field(default=False)  # acknowledged (handled or dead-lettered)


class Inbox:
    """The worker that takes a bus's messages off the network thread (see the module doc)."""

    def __init__(self, bus: Bus, counters: Counters) -> None:
        self.bus = bus
        self.counters = counters
        self.routes: list[Route] = []
        self.batch_handler: Callable[[list[Delivery]], None] | None = None
        self.batch_max = 1
        self.on_tick: Callable[[], None] | None = None
        self.tick_s = 1.0
        self.max_qos0 = MAX_QOS0
        self._q: collections.deque[Delivery] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._qos0 = 0
        self._matched: dict[str, Route | None] = {}
        # Wall-clock time since which :meth:`retry` has been failing on the infrastructure (the first
        # failure not yet followed by a success), and what failed; the health check reads them.
        self.failing_since: float | None = None
        self.failing_what = ""

    # --- declared by the service ------------------------------------------------------------
    def route(self, filter: str, model_cls: type[BaseModel] | None, handler: Callable[[str, Any], None] | None, qos: int = 1) -> Route:
        r = Route(filter, model_cls, handler, qos)
        self.routes.append(r)
        self._matched.clear()
        return r

    def match(self, topic: str) -> Route | None:
        """The first route whose filter matches ``topic`` (remembered per topic: a box has few)."""
        try:
            return self._matched[topic]
        except KeyError:
            pass
        if len(self._matched) >= MAX_CACHED_TOPICS:
            self._matched.clear()
        r = self._matched[topic] = next((r for r in self.routes if topic_matches_sub(r.filter, topic)), None)
        return r

    def set_batch_handler(self, handler: Callable[[list[Delivery]], None], batch_max: int) -> None:
        self.batch_handler = handler
        self.batch_max = max(1, batch_max)

    # --- network thread ---------------------------------------------------------------------
    def put(self, d: Delivery) -> bool:
        """Enqueue a received message; False when a QoS 0 one was dropped (the queue is full)."""
        with self._cond:
            if d.qos == 0:
                if self._qos0 >= self.max_qos0:
                    self.counters.inc("inbox_dropped")
                    return False
                self._qos0 += 1
            self._q.append(d)
            self._cond.notify()
        return True

    def depth(self) -> int:
        with self._cond:
            return len(self._q)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, name: str) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"{name}-inbox", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current batch; what is still queued stays unacknowledged (redelivered)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        with self._cond:
            left = len(self._q)
            self._q.clear()
            self._qos0 = 0
        if left:
            logger.info("%d message(s) left unacknowledged at stop; the broker delivers them again", left)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- the worker -------------------------------------------------------------------------
    def _take(self, timeout: float) -> list[Delivery]:
        with self._cond:
            if not self._q and not self._stop.is_set():
                self._cond.wait(timeout)
            out: list[Delivery] = []
            n = self.batch_max if self.batch_handler is not None else 1
            while self._q and len(out) < n:
                d = self._q.popleft()
                if d.qos == 0:
                    self._qos0 -= 1
                out.append(d)
            return out

    def _loop(self) -> None:
        next_tick = time.monotonic() + self.tick_s
        while not self._stop.is_set():
            batch = self._take(max(0.0, min(next_tick - time.monotonic(), 0.5)))
            try:
                if batch:
                    self._process(batch)
                if time.monotonic() >= next_tick:  # always moves on: an idle worker waits, never spins
                    next_tick = time.monotonic() + self.tick_s
                    if self.on_tick is not None:
                        self.retry(self.on_tick, "periodic check")
            except Stopping:
                return
            except Exception:  # noqa: BLE001 - the inbox must outlive any bug; the message was acked or will be redelivered
                self.counters.inc("inbox_errors")
                logger.exception("inbox worker error (the worker goes on)")

    def _process(self, batch: list[Delivery]) -> None:
        ok = [d for d in batch if self._validate(d)]
        if self.batch_handler is not None and ok:
            handle = self.batch_handler
            try:
                self.retry(lambda: handle(ok), "batch")
            except Stopping:
                raise
            except Exception:  # noqa: BLE001 - find the message at fault: one at a time
                logger.debug("batch handler failed; handling the batch one message at a time", exc_info=True)
                for d in ok:
                    if not d.done:
                        self.guard(d, lambda d=d: self.retry(lambda: handle([d]), f"message on {d.topic}"))
            for d in ok:
                self._ack(d, handled=True)
            return
        for d in ok:
            if d.route is None or d.route.handler is None:
                self._ack(d, handled=True)
                continue
            handler = d.route.handler
            if self.guard(d, lambda h=handler, d=d: self.retry(lambda: h(d.topic, d.obj), f"message on {d.topic}")):
                self._ack(d, handled=True)

    def _validate(self, d: Delivery) -> bool:
        """Route and validate ``d``; a message at fault is dead-lettered and acknowledged here."""
        self.counters.inc("received")
        if d.route is None:
            d.route = self.match(d.topic)
        if d.route is None:
            self.counters.inc("unrouted")
            logger.warning("message on %s matches no subscription of %s; acknowledged and dropped", d.topic, self.bus.service)
            self._ack(d)
            return False
        limit = self.bus.settings.max_payload_bytes
        if len(d.payload) > limit:
            self.counters.inc("rejected")
            self.reject(d, f"oversized: {len(d.payload)} bytes > mqtt.max_payload_bytes={limit}")
            return False
        if d.route.model_cls is None:
            d.obj = d.payload
            return True
        try:
            d.obj = d.route.model_cls.model_validate_json(d.payload)
        except ValidationError as exc:
            self.counters.inc("rejected")
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "payload"
            self.reject(d, f"invalid {d.route.model_cls.__name__}: {loc}: {first['msg']} ({exc.error_count()} error(s))")
            return False
        # Identity: a payload speaks only for the meter of the topic the ACL let its sender publish on.
        meter = self.bus.topics.parse_meter(d.topic) if isinstance(d.obj, MeterMessage) else None
        if meter is not None and meter[:2] != (d.obj.site, d.obj.meter):
            self.counters.inc("rejected")
            self.reject(d, f"payload site/meter {d.obj.site}/{d.obj.meter} does not match topic {d.topic}")
            return False
        return True

    # --- for handlers -----------------------------------------------------------------------
    def retry(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` until it does not fail on the infrastructure; raises :class:`Stopping` at a stop.

        Any other exception passes through (the caller's message is at fault).
        """
        delay, failures = RETRY_MIN_S, 0
        while True:
            try:
                result = fn()
            except INFRA_ERRORS as exc:
                failures += 1
                self.counters.inc("infra_retries")
                if self.failing_since is None:
                    self.failing_since = time.time()
                self.failing_what = f"{what}: {type(exc).__name__}: {exc}"
                if failures == 1:
                    logger.error("%s: %s: %s; nothing acknowledged, retrying with backoff until it works", what, type(exc).__name__, exc)
                else:
                    logger.debug("%s: retry %d failed: %s", what, failures, exc)
                if self._stop.wait(delay):
                    raise Stopping(what) from exc
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if failures:
                logger.info("%s: works again after %d retry(ies)", what, failures)
                self.failing_since = None
            return result

    def guard(self, d: Delivery, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` for delivery ``d``; a fault in the message dead-letters ``d`` (False).

        :class:`Stopping` passes through; an infrastructure error here has outlived :meth:`retry`
        only if ``fn`` did not use it, and also passes through (the caller retries).
        """
        try:
            fn()
        except (Stopping, *INFRA_ERRORS):
            raise
        except MessageFault as exc:  # the handler's own verdict on the content
            self.counters.inc("rejected")
            self.reject(d, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stream
            self.counters.inc("handler_errors")
            logger.debug("handler for %s failed", d.topic, exc_info=True)
            self.reject(d, f"handler error: {type(exc).__name__}: {exc}")
            return False
        return True

    def reject(self, d: Delivery, reason: str) -> None:
        """Dead-letter ``d`` with its raw bytes and ``reason`` and acknowledge it."""
        self.bus.dead_letter(d.topic, reason, d.payload)
        self._ack(d)

    def _ack(self, d: Delivery, *, handled: bool = False) -> None:
        if d.done:
            return
        d.done = True
        if handled:
            self.counters.inc("handled")
        if d.qos > 0:
            self.bus.ack(d.mid, d.qos)
