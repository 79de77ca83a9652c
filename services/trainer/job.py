"""One training run in a child process: lowered priority, limited threads, TensorFlow's memory
returned to the system when it ends. The trainer service's MQTT handling never waits on it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import Connection

from shared.settings import Settings

logger = logging.getLogger(__name__)


def _child(settings: Settings, end: datetime | None, jobs: dict[str, list[str]], conn: Connection) -> None:
    from shared.service import setup_logging
    from shared.store import open_store

    setup_logging(settings.log_level)
    try:
        from services.trainer import training

        training.configure_runtime(settings)
        store = open_store(settings)
        try:
            results = training.train_meters(settings, store, jobs, end)
        finally:
            store.close()
        conn.send(("ok", [r.to_dict() for r in results]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which logs and counts it
        logging.getLogger(__name__).exception("training failed")
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class JobFailed(RuntimeError):
    pass


def run_in_child(settings: Settings, end: datetime | None, jobs: dict[str, Sequence[str]],
                 stop: threading.Event, poll_s: float = 0.5) -> list[dict]:
    """Train ``jobs`` (meter -> signals) in a spawned process; returns TrainResult dicts. Stops the
    child when ``stop`` is set."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(settings, end, {m: list(v) for m, v in jobs.items()}, child), name="flowwatch-train", daemon=True)
    proc.start()
    child.close()
    try:
        while True:
            if stop.is_set():
                raise JobFailed("stopped while training")
            if parent.poll(poll_s):
                try:
                    status, payload = parent.recv()
                except EOFError:
                    raise JobFailed(f"training process ended without a result (exit code {proc.exitcode})") from None
                if status != "ok":
                    raise JobFailed(payload)
                return payload
            if not proc.is_alive() and not parent.poll(0):
                raise JobFailed(f"training process died (exit code {proc.exitcode}; out of memory?)")
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            logger.warning("stopping the training process %s", proc.pid)
            proc.terminate()
            proc.join(5)
        parent.close()
