"""Service base: one stop event, signal handling, setup → run → teardown (in ``finally``, flushing),
status publication on MQTT (retained, last will "offline") and a heartbeat file for health checks.

Healthy means working, not only alive: the status carries the failure states that hold now, each
with since when and its limit (``failing``: the broker unreachable, the store or disk failing, the
collector's meter silent), and :mod:`shared.health` judges the heartbeat file from them.

A service subclasses :class:`Service`, declares what it subscribes to in ``__init__`` or ``setup``
(``self.bus.subscribe(filter, Model, handler)``, or a batch handler with
``self.inbox.set_batch_handler``) and implements ``setup`` and ``teardown``; ``run`` is needed only
by a service with a loop of its own (the collector reads its meter there). Every message is
handled by the one inbox worker of the service (:mod:`shared.inbox`), never on paho's thread;
``tick`` runs in that worker every ``tick_s`` seconds of wall clock (liveness checks).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from shared.bus import Bus
from shared.counters import Counters
from shared.eventtime import TimeGuard
from shared.fileio import atomic_write
from shared.health import STALE_S, health_path
from shared.inbox import MessageFault
from shared.messages import Failing, FailureKind, MeterMessage, ServiceStatus
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.store import Store

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
STATUS_EVERY_S = 10.0
HEALTH_STALE_S = STALE_S


def setup_logging(level: str = "INFO") -> None:
    """The one place the log format is set."""
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format=LOG_FORMAT, force=True)
    for noisy in ("urllib3", "pymodbus", "matplotlib", "h5py", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level, logging.INFO)))


def health_file(settings: Settings, name: str) -> Path:
    """The heartbeat file of service ``name`` (read by :mod:`shared.health` and ``flowwatch up``)."""
    return health_path(settings.data_dir, name)


def failing_state(since: float, limit_s: float, detail: str = "") -> Failing:
    """A failure state for the status: ``since`` in wall-clock seconds."""
    return Failing(since=datetime.fromtimestamp(since, UTC), limit_s=limit_s, detail=detail[:300])


class Service:
    """Base of the five services."""

    name: str = "service"
    #: A service whose work goes on while its store is down (the notifier: the store may be what the
    #: alert is about) is not unhealthy for it; a store it waits on (every other one) is.
    store_is_secondary: bool = False
    tick_s: float = 1.0
    #: The store of a service that has one (detector, forecaster, exporter, trainer): its health
    #: counts the store's own waiting (``Store.failing_since``) as the store failing.
    store: Store | None = None

    def __init__(self, settings: Settings, *, bus: Bus | None = None) -> None:
        self.settings = settings
        self.counters = Counters()
        self.stop_event = threading.Event()
        self.started_at = datetime.now(UTC)
        self.last_event: datetime | None = None
        self.ready = threading.Event()
        self.bus = bus or Bus(
            settings.mqtt,
            self.name,
            counters=self.counters,
            will=ServiceStatus(service=self.name, state="offline", ts=self.started_at),
        )
        self.topics = self.bus.topics
        self.inbox = self.bus.inbox
        self.time_guard = TimeGuard(settings.limits)
        self.bus.on_connected = self.publish_status
        self._status_thread: threading.Thread | None = None

    # --- to override ------------------------------------------------------------------------
    def setup(self) -> None:
        """Open stores, subscribe, back-fill windows."""

    def run(self) -> None:
        """The loop. Default: wait for stop (event-driven services work in bus callbacks)."""
        self.stop_event.wait()

    def teardown(self) -> None:
        """Flush and close what setup opened."""

    def tick(self) -> None:
        """Wall-clock work in the inbox worker every ``tick_s`` (only if a service overrides it)."""

    def admit(self, r: MeterMessage) -> None:
        """Judge a reading before it moves any clock or creates any state; raise :class:`MessageFault`
        (the inbox dead-letters it, counted) when its time is implausible, or when it would be a new
        meter past ``limits.max_meters_per_site`` (a forged stream of meter ids cannot grow state,
        files or the store without bound). The meter's clock moves on only when it passes."""
        key = (r.site, r.meter)
        if not self.time_guard.knows(key):
            n = self.time_guard.meters(r.site)
            if n >= self.settings.limits.max_meters_per_site:
                self.counters.inc("meters_refused")
                raise MessageFault(f"meter {r.site}/{r.meter} would be meter {n + 1} of site {r.site} "
                                   f"(limits.max_meters_per_site={self.settings.limits.max_meters_per_site})")
        reason = self.time_guard.check(key, r.ts)
        if reason is not None:
            self.counters.inc("implausible_time")
            raise MessageFault(reason)

    def retry(self, fn, what: str):  # noqa: ANN001, ANN201 - see Inbox.retry
        """Run ``fn`` until the store/disk lets it through (a handler's I/O; see :meth:`Inbox.retry`)."""
        return self.inbox.retry(fn, what)

    def store_readings(self, readings: list) -> None:
        """Write readings to this service's store, counting the ones it already held (identical: a
        redelivery) and the conflicting ones (kept in reading_conflicts)."""
        result = self.store.write_readings(readings)
        if result.identical:
            self.counters.inc("readings_identical", result.identical)
        if result.conflicting:
            self.counters.inc("reading_conflicts", result.conflicting)

    # --- status -----------------------------------------------------------------------------
    def failing(self) -> dict[FailureKind, Failing]:
        """The failure states that hold now, each with since when and how long it may last (the
        health check's input): the broker unreachable; the store or disk failing (the inbox retrying
        an infrastructure fault, or the store waiting inside a call: a SQLite lock held by another
        program). A service adds its own (the collector: its meter silent)."""
        out: dict[FailureKind, Failing] = {}
        mqtt = self.settings.mqtt
        if (down := self.bus.down_since) is not None:
            out["broker"] = failing_state(down, mqtt.unhealthy_after_s, f"not connected to {mqtt.host}:{mqtt.port}")
        waits = []  # each read once: other threads change them
        if (retrying := self.inbox.failing_since) is not None:
            waits.append((retrying, self.inbox.failing_what))
        if self.store is not None and not self.store_is_secondary and (waiting := self.store.failing_since) is not None:
            waits.append((waiting, f"{self.store.name} store locked or not answering; retrying"))
        if waits:
            since, what = min(waits)
            out["store"] = failing_state(since, self.settings.store.unhealthy_after_s, what)
        return out

    def status(self, state: str = "online", detail: str = "") -> ServiceStatus:
        return ServiceStatus(
            service=self.name,
            state=state,  # type: ignore[arg-type]
            ts=datetime.now(UTC),
            started_at=self.started_at,
            counters=self.counters.snapshot(),
            last_event=self.last_event,
            detail=detail,
            failing=self.failing() if state == "online" else {},
        )

    def publish_status(self, state: str = "online") -> None:
        st = self.status(state)
        self._write_heartbeat(st)
        if self.bus.connected:
            self.bus.publish(self.topics.status(self.name), st, qos=1, retain=True)

    def _write_heartbeat(self, st: ServiceStatus) -> None:
        try:
            atomic_write(health_file(self.settings, self.name), st.model_dump_json().encode())
        except OSError as exc:
            logger.debug("heartbeat not written: %s", exc)

    def _status_loop(self) -> None:
        while not self.stop_event.wait(STATUS_EVERY_S):
            try:
                self.publish_status()
            except Exception:  # noqa: BLE001 - status must never kill the service
                logger.exception("status publication failed")

    # --- lifecycle --------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: object) -> None:
            logger.info("%s: received %s, stopping", self.name, signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self) -> None:
        self.stop_event.set()

    def start(self, *, connect_wait_s: float = 10.0) -> None:
        """Run the service until stopped. Always tears down and publishes 'offline'.

        ``setup`` (subscribe, back-fill) runs *before* connecting: a persistent session delivers
        its queued messages right after the connect, and each must find its handler and a
        back-filled window.
        """
        ids = self.settings.meter_ids
        meters = ",".join(ids[:5]) + (f",... ({len(ids)} meters)" if len(ids) > 5 else "")
        logger.info("%s starting (site=%s meters=%s)", self.name, self.settings.site, meters)
        try:
            self.setup()
            if self.stop_event.is_set():
                return
            if type(self).tick is not Service.tick:  # wall-clock work, in the inbox worker
                self.inbox.on_tick, self.inbox.tick_s = self.tick, self.tick_s
            self.bus.connect(wait_s=None)
            deadline = time.monotonic() + connect_wait_s
            while not self.bus.connected and time.monotonic() < deadline:
                if self.stop_event.wait(0.05):
                    return
            if not self.bus.connected:
                logger.warning(
                    "%s: MQTT broker %s:%s not reachable yet; running and retrying in the background",
                    self.name, self.settings.mqtt.host, self.settings.mqtt.port,
                )
            self.publish_status()
            self._status_thread = threading.Thread(target=self._status_loop, name=f"{self.name}-status", daemon=True)
            self._status_thread.start()
            self.ready.set()
            logger.info("%s ready", self.name)
            self.run()
        finally:
            self.stop_event.set()
            self.inbox.stop()  # the handler at work finishes; what is queued stays unacknowledged
            try:
                self.teardown()
            finally:
                final = self.status("offline")
                self._write_heartbeat(final)
                self.bus.close(final)
                logger.info("%s stopped", self.name)

    def start_in_thread(self) -> threading.Thread:
        """For tests and ``flowwatch up``'s in-process use: run ``start`` in a thread."""
        t = threading.Thread(target=self.start, name=self.name, daemon=True)
        t.start()
        return t
