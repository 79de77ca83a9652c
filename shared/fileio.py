"""Atomic, durable file writes: a reader sees the old file or the new one, never a torn one.

``atomic_write`` writes to a temporary file in the same folder (same file system, so the rename is
atomic), flushes and fsyncs it, renames it over the target with ``os.replace``, then fsyncs the
folder so the rename itself survives a power cut. Every file flowwatch replaces in place goes
through it: export files, the current model version, metrics, secrets, heartbeats.

A crash can leave a temporary file behind (``.fw-<name>.<random>.tmp``, never the target's name);
a folder that others list can be cleared of them at start (the exporter does).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

TMP_PREFIX = ".fw-"
TMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:  # e.g. Windows cannot open a folder; the rename is still atomic
        logger.debug("cannot open %s to fsync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("fsync of folder %s failed: %s", folder, exc)
    finally:
        os.close(fd)


def _create_temp(folder: Path, name: str, mode: int) -> tuple[int, Path]:
    for _ in range(100):
        tmp = folder / f"{TMP_PREFIX}{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {folder / name}")


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync folder).

    ``mode`` sets the file's permission bits exactly, whatever the umask (0o600 for a secret: the
    temporary file is created with it, so the secret is never readable by others; 0o644 for a file
    another user reads). Unset, the file gets what ``open(path, "w")`` would give (0o666 less the
    umask). The folder is created if missing.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(folder, path.name, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.chmod(tmp, mode)  # exact bits: the umask narrowed the ones given to open()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


#: Mode of the SQLite files flowwatch creates (the store, the collector's spool), less the umask:
#: read and write for the owner and the group, never anything for others. In docker compose the
#: services run as different uids in the group ``flowwatch`` with umask 002 (services/Dockerfile),
#: and the shared volume's setgid folder gives every new file that group (app/credentials.py
#: ``prepare_data_dirs``), so the file is 0660 and every service container still opens it.
DB_MODE = 0o660


def restrict_db_file(path: Path, mode: int = DB_MODE) -> None:
    """Create the SQLite file ``path`` (empty) with ``mode`` less the umask before SQLite opens it,
    or take the bits of others away from one that exists (if ours; another owner's is logged).

    SQLite creates a database file with 0644 less the umask (readable by every user of the machine)
    and its ``-wal`` and ``-shm`` files with exactly the database file's mode, so the mode set here
    carries over to them; ones left over from an older version are treated like the database file.
    An empty file is an empty database.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if st.st_mode & 0o007:
            try:
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o007)
            except PermissionError:
                logger.warning("%s is readable by every user of this machine and not ours to change (owner uid %d); "
                               "run chmod o-rwx on it", p, st.st_uid)
