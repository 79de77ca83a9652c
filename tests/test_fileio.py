"""shared.fileio.atomic_write: replaces, leaves no temporary file, sets the mode it is given (pure, no services)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared import fileio
from shared.fileio import atomic_write


def test_replaces_and_leaves_only_the_target(tmp_path: Path):
    p = tmp_path / "new" / "folder" / "current"
    atomic_write(p, b"one\n")
    atomic_write(p, b"two\n")
    assert p.read_bytes() == b"two\n"
    assert [x.name for x in p.parent.iterdir()] == ["current"]


def test_mode_is_exact_whatever_the_umask(tmp_path: Path, umask):
    umask(0o077)
    atomic_write(tmp_path / "shared.txt", b"x", mode=0o644)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
    umask(0o000)
    atomic_write(tmp_path / "secret", b"x", mode=0o600)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_default_mode_is_what_open_gives(tmp_path: Path, umask):
    umask(0o027)
    atomic_write(tmp_path / "f", b"x")
    (tmp_path / "g").write_bytes(b"x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == (tmp_path / "g").stat().st_mode & 0o777 == 0o640


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch):
    p = tmp_path / "current"
    atomic_write(p, b"old")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["current"]


def test_temp_name_is_ours(tmp_path: Path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", spy)
    atomic_write(tmp_path / "server.txt", b"x")
    assert seen and seen[0].startswith(f"{fileio.TMP_PREFIX}server.txt.") and seen[0].endswith(fileio.TMP_SUFFIX)
