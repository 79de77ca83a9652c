"""The notifier service: anomalies in, notifications to people out, through a durable outbox.

It is its own service, not part of the exporter: a dead SMTP server or webhook must never hold the
device's files, and its secrets (SMTP password, chat tokens) stay out of every other container.

    inbox worker (anomaly, command, status)        sender thread
    ───────────────────────────────────────        ──────────────────────────────────────────────
    anomaly → transition? → route → silenced?  ──► outbox.due(now) → channel.send → mark sent
            → flapping? quiet hours? → outbox          └ failure: retry later, backoff doubling
    command (ack / silence) → store → in force
    tick: escalate open critical alerts not acknowledged; re-read actions from the store

The anomaly is acknowledged to the broker after the outbox commit; the sender never runs on the
inbox worker, so a channel that hangs for its timeout delays nothing else. Acknowledgements and
silences live in the store (``alert_actions``): ``flowwatch alerts`` writes them there too, and
the notifier re-reads them every ``notifier.command_poll_s``. The store is secondary here: its
calls are never retried on the inbox worker (``_store_call``), so a store that is down does not
stop notifications.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from services.notifier import channels
from services.notifier.outbox import Outbox
from services.notifier.policy import Actions, backoff_s, compose, compose_summary, quiet_until, route, transition_of
from shared.bus import Bus
from shared.messages import AlertAction, AlertState, Anomaly, ServiceStatus, alert_id
from shared.service import Service
from shared.settings import Settings
from shared.store import Store, StoreError, open_store

logger = logging.getLogger(__name__)

ACTIONS_LOOKBACK = timedelta(days=90)  # acks and silences read back at start
PURGE_EVERY_S = 3600.0
STORE_BACKOFF_S = 60.0  # after a store error, the store is left alone this long (notifications go on)
STATUS_EVERY_S = 60.0  # a service's online state is written at most this often (and on every change)


class NotifierService(Service):
    name = "notifier"
    store_is_secondary = True  # a store that is down stops no notification: not unhealthy (store_errors counts it)
    tick_s = 1.0

    def __init__(self, settings: Settings, *, bus: Bus | None = None, store: Store | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.cfg = settings.notifier
        self.tz = settings.tz
        self.store: Store | None = store
        self._owns_store = store is None
        self.outbox: Outbox | None = None
        self.actions = Actions()
        self._actions_read = 0.0
        self._status_written: dict[str, tuple[bool, float]] = {}
        self._sender: threading.Thread | None = None
        self._wake = threading.Event()
        self._ack_held: set[str] = set()
        self._state_sent: tuple | None = None  # what the retained notifier/state holds
        self._next_purge = 0.0
        self._store_down_until = 0.0
        self._unsaved: list[AlertAction] = []
        t = self.topics
        self.bus.subscribe(t.all_meters("anomaly"), Anomaly, self._on_anomaly)
        self.bus.subscribe(t.notifier_command(), AlertAction, self._on_command)
        self.bus.subscribe(t.all_status(), ServiceStatus, self._on_status)

    # --- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)
        self.outbox = Outbox(self.settings.path(self.cfg.outbox))
        self._read_actions()  # a store down at start: none in force until it answers (logged)
        counts = self.outbox.counts()
        if counts.get("pending"):
            logger.info("outbox %s: %d notification(s) pending from before; sending them", self.outbox.path, counts["pending"])
        if not self.cfg.routes:
            logger.info("notifier: no routes configured (notifier.routes); alerts are recorded but sent nowhere")
        self._sender = threading.Thread(target=self._send_loop, name="notifier-sender", daemon=True)
        self._sender.start()

    def teardown(self) -> None:
        self._wake.set()
        if self._sender is not None:
            self._sender.join(30)
        if self.outbox is not None:
            self.outbox.close()
        if self.store is not None and self._owns_store:
            self.store.close()

    # --- acknowledgements and silences -------------------------------------------------------
    def _store_call(self, fn, what: str):  # noqa: ANN001, ANN202
        """Run a store call unless the store failed in the last STORE_BACKOFF_S; None when it fails.

        The store is secondary here: a store that is down (it may be what the alert is about) must
        not stop notifications, so its calls are never retried on the inbox worker."""
        if time.monotonic() < self._store_down_until:
            return None
        try:
            return fn()
        except StoreError as exc:
            self._store_down_until = time.monotonic() + STORE_BACKOFF_S
            self.counters.inc("store_errors")
            logger.warning("notifier: %s failed (%s); notifications go on, the store is tried again in %.0f s",
                           what, exc, STORE_BACKOFF_S)
            return None

    def _read_actions(self) -> None:
        """Rebuild the acknowledgements and silences in force from the store, and swap them in at
        once (the sender thread reads them: it never sees a half-applied state). Actions not yet
        written (the store was down when they came) are written first and kept meanwhile."""
        assert self.store is not None
        self._actions_read = time.monotonic()
        if self._unsaved and self._store_call(lambda: self.store.write_alert_actions(self._unsaved), "storing alert actions") is not None:
            self._unsaved = []
        stored = self._store_call(lambda: self.store.read_alert_actions(datetime.now(UTC) - ACTIONS_LOOKBACK), "reading alert actions")
        if stored is None:
            return  # keep the state in force
        fresh = Actions()
        for a in sorted([*stored, *self._unsaved], key=lambda a: a.ts):
            fresh.apply(a)
        self.actions = fresh

    def _on_command(self, topic: str, a: AlertAction) -> None:
        assert self.store is not None
        if self._store_call(lambda: self.store.write_alert_actions([a]), "storing an alert action") is None:
            self._unsaved.append(a)  # in force now; written when the store is back
        self.actions.apply(a)
        self.counters.inc(f"actions_{a.action}")
        logger.info("alert action %s: %s", a.action, a.alert_id or f"{a.site}/{a.meter or '*'}/{a.kind or '*'} until {a.until}")

    def _publish_state(self) -> None:
        """Publish the acknowledgements and silences in force (retained) when they changed, a
        silence ended included: the exporter shows them in alert.txt."""
        now = datetime.now(UTC)
        acked = tuple(sorted(self.actions.acked, key=lambda k: self.actions.acked[k].ts)[-5000:])
        silences = tuple(self.actions.active_silences(now)[-1000:])
        sig = (acked, tuple(s.id for s in silences))
        if sig == self._state_sent or not self.bus.connected:
            return
        self.bus.publish(self.topics.notifier_state(), AlertState(ts=now, acked=acked, silences=silences), qos=1, retain=True)
        self._state_sent = sig

    # --- services' online state (the "service offline" Grafana rule reads it) --------------------
    def _on_status(self, topic: str, st: ServiceStatus) -> None:
        online = st.state == "online"
        last = self._status_written.get(st.service)
        now = time.monotonic()
        if last is not None and last[0] == online and now - last[1] < STATUS_EVERY_S:
            return
        assert self.store is not None
        if self._store_call(lambda: self.store.write_service_status([(st.service, online, st.ts)]), "writing service status") is not None:
            self._status_written[st.service] = (online, now)

    # --- anomalies --------------------------------------------------------------------------
    def _on_anomaly(self, topic: str, a: Anomaly) -> None:
        assert self.outbox is not None
        self.counters.inc("anomalies")
        aid = alert_id(a.site, a.meter, a.kind, a.signal, a.start)
        known = self.retry(lambda: self.outbox.alert(aid), "reading the outbox")
        transition = transition_of(a, known)
        if transition is None:
            if known is not None and known["state"] == "open":  # keep the latest values for an escalation's text
                self.retry(lambda: self.outbox.record(aid, a.model_dump_json(), _fields(a), [],
                                                      notified_at=known["notified_at"]), "recording the alert")
            return
        escalations = None
        if transition == "escalate":
            escalations = (known or {}).get("escalations", 0) + 1
            transition = f"escalate{escalations}"
        now = time.time()
        rows = self._notifications(a, transition, now)
        n = self.retry(lambda: self.outbox.record(aid, a.model_dump_json(), _fields(a), rows, notified_at=now, escalations=escalations),
                       "writing the outbox")
        if n:
            self.counters.inc("enqueued", n)
            self._wake.set()
        if a.ts and (self.last_event is None or a.ts > self.last_event):
            self.last_event = a.ts

    def _notifications(self, a: Anomaly, transition: str, now: float, note: str = "") -> list:
        """The outbox rows of one transition: routed, not silenced, flapping counted, quiet hours applied."""
        assert self.outbox is not None
        out = []
        wall = datetime.fromtimestamp(now, UTC)
        chans = route(self.cfg, a, transition)
        if not chans:
            return out
        if (s := self.actions.silenced(a.site, a.meter, a.kind, wall)) is not None:
            self.counters.inc("silenced", len(chans))
            logger.info("%s %s on %s/%s not sent: silenced until %s", a.kind, transition, a.site, a.meter, s.until)
            return out
        held = quiet_until(self.cfg.quiet_hours, a.severity, wall, self.tz)
        window = self.cfg.flap_window_minutes * 60
        for ch in chans:
            if transition in ("open", "close") and a.severity != "critical" and \
                    self.outbox.recent_count(a.site, a.meter, a.kind, ch, now - window) >= self.cfg.flap_max:
                summary = compose_summary(self.cfg, a.site, a.meter, a.kind, ch, wall, 1, self.tz)
                self.outbox.hold_back(summary, now + window, now)
                self.counters.inc("flapping_held")
                continue
            n = compose(self.cfg, a, transition, ch, self.tz, note=note)
            out.append((n, held.timestamp() if held is not None else now, a.severity))
        return out

    # --- wall-clock work: escalation, actions re-read -----------------------------------------
    def tick(self) -> None:
        if time.monotonic() - self._actions_read >= self.cfg.command_poll_s:
            self._read_actions()
        self._publish_state()
        if time.monotonic() >= self._next_purge:
            assert self.outbox is not None
            n = self.outbox.purge(time.time() - self.cfg.keep_days * 86400)
            if n:
                logger.info("outbox: %d old row(s) removed (notifier.keep_days)", n)
            self._next_purge = time.monotonic() + PURGE_EVERY_S
        if self.cfg.escalate_after_minutes <= 0:
            return
        assert self.outbox is not None
        now = time.time()
        after = self.cfg.escalate_after_minutes * 60
        for al in self.outbox.open_alerts(now - after, self.cfg.escalate_max):
            if al["alert_id"] in self.actions.acked:
                if al["alert_id"] not in self._ack_held:  # counted once: the escalation an ack held back
                    self._ack_held.add(al["alert_id"])
                    self.counters.inc("escalation_acked")
                    logger.info("alert %s acknowledged: not escalated", al["alert_id"])
                continue
            a = Anomaly.model_validate_json(al["anomaly"])
            k = al["escalations"] + 1
            note = f"Escalated: open and not acknowledged for {(now - al['notified_at']) / 60:.0f} min (notifier.escalate_after_minutes)"
            rows = self._notifications(a, f"escalate{k}", now, note)
            self.outbox.record(al["alert_id"], al["anomaly"], _fields(a), rows, notified_at=now, escalations=k)
            self.counters.inc("escalated")
            self._wake.set()

    # --- the sender thread --------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                sent_any = self._send_due()
            except Exception:  # noqa: BLE001 - the sender must outlive a bug or a locked outbox
                logger.exception("notifier sender error (it goes on)")
                sent_any = False
            if not sent_any:
                self._wake.wait(1.0)
                self._wake.clear()

    def _send_due(self) -> bool:
        assert self.outbox is not None
        now = time.time()
        rows = self.outbox.due(now)
        for row in rows:
            if self.stop_event.is_set():
                return False
            cfg = self.cfg.channels.get(row.channel)
            if cfg is None:
                self.outbox.mark(row.key, "dropped", now, f"channel {row.channel!r} no longer configured")
                self.counters.inc("dropped")
                continue
            if self.actions.silenced(row.site, row.meter, row.kind, datetime.fromtimestamp(now, UTC)):
                self.outbox.mark(row.key, "silenced", now)  # silenced after it was queued: sent never
                self.counters.inc("silenced")
                continue
            try:
                channels.send(cfg, row)
            except channels.SendError as exc:
                t = time.time()
                if t - row.created >= self.cfg.give_up_after_hours * 3600:
                    self.outbox.mark(row.key, "dropped", t, str(exc))
                    self.counters.inc("dropped")
                    logger.error("notification %s dropped after %d tries (notifier.give_up_after_hours): %s", row.key, row.attempts + 1, exc)
                    continue
                delay = backoff_s(row.attempts + 1, self.cfg.retry_min_s, self.cfg.retry_max_s)
                self.outbox.retry_later(row.key, t + delay, str(exc))
                self.counters.inc("send_failed")
                log = logger.warning if row.attempts == 0 else logger.info
                log("notification %s via %s not sent (%s); retrying in %.0f s", row.key, row.channel, exc, delay)
                continue
            self.outbox.mark(row.key, "sent", time.time())
            self.counters.inc("sent")
            logger.info("notification %s sent via %s", row.key, row.channel)
        return bool(rows)


def _fields(a: Anomaly) -> tuple:
    return (a.site, a.meter, a.kind, a.signal, a.severity, a.state)
