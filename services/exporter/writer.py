"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Each write goes to a temporary file in the same folder (same file system, so the rename is
atomic), is flushed and fsynced, then renamed over the target with ``os.replace``; the folder is
fsynced too so the rename itself survives a power cut.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TMP_PREFIX = ".fw-"
TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
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


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync folder)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the device user must be able to read it
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def remove_stale_temps(folder: Path) -> int:
    """Remove temporary files a crash left behind in ``folder`` (ours only: ``.fw-*.tmp``)."""
    n = 0
    if not folder.is_dir():
        return 0
    for p in folder.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        try:
            p.unlink()
            n += 1
        except OSError as exc:
            logger.warning("cannot remove stale temporary file %s: %s", p, exc)
    return n
