"""The SQLite files flowwatch creates (the store, the collector's spool) and their -wal / -shm files
give nothing to other users of the machine, and the services of docker compose, which run as
different uids in the group flowwatch on a shared setgid volume, still share them."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.collector.spool import Spool
from shared.messages import Reading
from shared.store import StoreError
from shared.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading(site="s", meter="m", ts=T0 + timedelta(minutes=start + i), seq=start + i, flow_rate=1.0, pressure=3.0)
            for i in range(n)]


def open_store(path: Path) -> SqliteStore:
    st = SqliteStore(path)
    st.write_readings(readings(5))
    return st


def open_spool(path: Path) -> Spool:
    sp = Spool(path, max_rows=100)
    sp.put("t", b"payload", 1, seq=0, ts=0)
    return sp


OPENERS: dict[str, Callable[[Path], object]] = {"store": open_store, "spool": open_spool}


def modes(path: Path) -> dict[str, int]:
    """Permission bits of the database file and its -wal and -shm files (those that exist)."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            out[suffix or "db"] = stat.S_IMODE(p.stat().st_mode)
    return out


@pytest.mark.parametrize("kind", OPENERS)
@pytest.mark.parametrize("mask", [0o002, 0o022], ids=["umask002", "umask022"])
def test_new_files_give_others_nothing(kind: str, mask: int, tmp_path: Path, umask) -> None:
    umask(mask)  # 002: the containers (services/Dockerfile); 022: a usual login
    path = tmp_path / f"{kind}.db"
    db = OPENERS[kind](path)
    try:
        found = modes(path)
        assert set(found) == {"db", "-wal", "-shm"}  # open, in WAL mode, written: all three exist
        assert all(m & 0o007 == 0 for m in found.values()), {k: oct(m) for k, m in found.items()}
        assert all(m == 0o660 & ~mask for m in found.values()), {k: oct(m) for k, m in found.items()}
    finally:
        db.close()


@pytest.mark.parametrize("kind", OPENERS)
def test_a_world_readable_file_from_before_is_closed_to_others(kind: str, tmp_path: Path, umask) -> None:
    umask(0o002)
    path = tmp_path / f"{kind}.db"
    sqlite3.connect(path).execute("CREATE TABLE old (x)").connection.close()  # as an older version did
    os.chmod(path, 0o664)
    db = OPENERS[kind](path)
    try:
        assert all(m & 0o007 == 0 for m in modes(path).values()), modes(path)
    finally:
        db.close()


# --- docker compose: several uids in one group on a setgid volume -----------------------------

GID_FLOWWATCH = 10000  # app/credentials.py


def as_user(uid: int, gid: int, work: Callable[[], None]) -> int:
    """Run ``work`` in a child process as ``uid:gid`` with the containers' umask; its exit code:
    0 it worked, 13 it was refused the file, 1 anything else. The child leaves without closing
    what it opened, like a container that is killed: -wal and -shm stay for the next one."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0o002)
            work()
            code = 0
        except (PermissionError, StoreError, sqlite3.OperationalError):
            code = 13
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="switches uids: needs root")
def test_services_in_the_group_share_the_store_and_others_cannot_read_it() -> None:
    vol = Path(tempfile.mkdtemp(prefix="fw-volume-"))
    try:
        # the compose volume: root:flowwatch, group-writable, setgid (credentials.prepare_data_dirs)
        os.chown(vol, 0, GID_FLOWWATCH)
        os.chmod(vol, 0o2775)
        store, spool = vol / "flowwatch.db", vol / "spool.db"
        # the detector (uid 10020) creates the store and writes; the collector (10010) its spool
        assert as_user(10020, GID_FLOWWATCH, lambda: open_store(store)) == 0
        assert as_user(10010, GID_FLOWWATCH, lambda: open_spool(spool)) == 0
        for path in (store, spool):
            found = modes(path)
            assert set(found) == {"db", "-wal", "-shm"} and set(found.values()) == {0o660}, found
            assert {path.with_name(path.name + s).stat().st_gid for s in ("", "-wal", "-shm")} == {GID_FLOWWATCH}

        # the forecaster (uid 10030, same group) writes to the same store, through the WAL left behind
        def forecaster() -> None:
            st = SqliteStore(store)
            st.write_readings(readings(5, start=5))
            assert len(st.read_reading_records("s", "m", T0, T0 + timedelta(hours=1))) == 10

        assert as_user(10030, GID_FLOWWATCH, forecaster) == 0
        # a user outside the group reads neither file
        for path in (store, spool):
            def intruder(path: Path = path) -> None:
                db = sqlite3.connect(path)
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()

            assert as_user(20000, 20000, intruder) == 13
    finally:
        shutil.rmtree(vol)
