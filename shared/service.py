"""Service base: one stop event, signal handling, setup → run → teardown (in ``finally``, flushing),
status publication on MQTT (retained, last will "offline") and a heartbeat file for health checks.

A service subclasses :class:`Service`, declares what it subscribes to in ``__init__`` or ``setup``
(``self.bus.subscribe(filter, Model, handler)``, or a batch handler with
``self.inbox.set_batch_handler``) and implements ``setup`` and ``teardown``; ``run`` is needed only
by a service with a loop of its own (the collector reads its meter there). Every message is
handled by the one inbox worker of the service (:mod:`shared.inbox`), never on paho's thread;
``tick`` runs in that worker every ``tick_s`` seconds of wall clock (liveness checks).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from shared.bus import Bus
from shared.counters import Counters
from shared.eventtime import TimeGuard
from shared.fileio import atomic_write
from shared.inbox import MessageFault
from shared.messages import MeterMessage, ServiceStatus
from shared.settings import Settings

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
STATUS_EVERY_S = 10.0
HEALTH_STALE_S = 60.0


def setup_logging(level: str = "INFO") -> None:
    """The one place the log format is set."""
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format=LOG_FORMAT, force=True)
    for noisy in ("urllib3", "pymodbus", "matplotlib", "h5py", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level, logging.INFO)))


def health_file(settings: Settings, name: str) -> Path:
    return settings.data_dir / "health" / f"{name}.json"


def check_health(settings: Settings, name: str, stale_s: float = HEALTH_STALE_S) -> tuple[bool, str]:
    """Is the service's heartbeat fresh and online? Used by ``flowwatch health NAME`` (Docker)."""
    path = health_file(settings, name)
    try:
        data = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError) as exc:
        return False, f"{name}: no heartbeat at {path} ({exc})"
    if data.get("state") != "online":
        return False, f"{name}: state {data.get('state')!r}"
    if age > stale_s:
        return False, f"{name}: heartbeat is {age:.0f}s old"
    return True, f"{name}: online, heartbeat {age:.0f}s ago"


class Service:
    """Base of the five services."""

    name: str = "service"
    tick_s: float = 1.0

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

    # --- status -----------------------------------------------------------------------------
    def status(self, state: str = "online", detail: str = "") -> ServiceStatus:
        return ServiceStatus(
            service=self.name,
            state=state,  # type: ignore[arg-type]
            ts=datetime.now(UTC),
            started_at=self.started_at,
            counters=self.counters.snapshot(),
            last_event=self.last_event,
            detail=detail,
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
        logger.info("%s starting (site=%s meter=%s)", self.name, self.settings.site, self.settings.meter)
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
