"""The exporter's files: written atomically and durably, readable by the device user.

The write itself (temp file in the same folder, fsync, rename, fsync the folder) is
:func:`shared.fileio.atomic_write`; here the export files get mode 0644, whatever the umask, and a
crash's leftover temporary files are cleared at start.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shared import fileio
from shared.fileio import TMP_PREFIX, TMP_SUFFIX

logger = logging.getLogger(__name__)

EXPORT_MODE = 0o644  # the device user (another uid) must be able to read the files


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably, mode 0644 (see :mod:`shared.fileio`)."""
    fileio.atomic_write(path, data, mode=EXPORT_MODE)


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
