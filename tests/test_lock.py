"""requirements/*.lock: every dependency pinned with its hashes, and in step with pyproject.toml.

The locks are written by ``./flowwatch lock`` (uv pip compile --generate-hashes --universal) and
installed with ``pip install --require-hashes`` by services/Dockerfile and ./flowwatch. A pin bumped
in pyproject.toml without re-locking fails here, so CI catches it before an image is built.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)\s*(;[^\\]*)?\\?\s*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_extras() -> list[str]:
    """The extras ./flowwatch lock writes (its LOCKS array): one source of the list."""
    m = re.search(r"^LOCKS=\(([^)]*)\)", (ROOT / "flowwatch").read_text(), re.M)
    assert m, "./flowwatch has no LOCKS=(...) line"
    return m.group(1).split()


def project_pins(extra: str | None) -> dict[str, str]:
    """name -> version of the core pins plus ``extra`` (self-references like flowwatch[all] expanded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    todo, seen = [None if extra is None else extra], set()
    reqs = list(project["dependencies"])
    while todo:
        e = todo.pop()
        if e is None or e in seen:
            continue
        seen.add(e)
        for req in project["optional-dependencies"][e]:
            m = re.fullmatch(r"flowwatch\[([^\]]+)\]", req.strip())
            if m:
                todo += [x.strip() for x in m.group(1).split(",")]
            else:
                reqs.append(req)
    for req in reqs:
        name, sep, version = req.partition("==")
        assert sep, f"pyproject.toml: {req!r} is not pinned exactly (name==version)"
        pins[canonical(name)] = version.strip()
    return pins


def lock_entries(extra: str) -> list[tuple[str, str, str, list[str]]]:
    """(name, version, marker, hashes) of each requirement in requirements/EXTRA.lock."""
    path = LOCK_DIR / f"{extra}.lock"
    entries: list[tuple[str, str, str, list[str]]] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line.startswith((" ", "\t")):
            assert stripped.startswith("--hash=sha256:"), f"{path.name}: unexpected continuation {stripped!r}"
            assert entries, f"{path.name}: a hash before any requirement"
            entries[-1][3].append(stripped.split(":", 1)[1].rstrip(" \\"))
            continue
        m = PIN.match(line)
        assert m, f"{path.name}: {line!r} is not a 'name==version' pin (options such as an index URL do not belong in a lock)"
        entries.append((canonical(m.group(1)), m.group(3), (m.group(4) or "").lstrip("; ").strip(), []))
    return entries


def lock_versions(extra: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, version, _, _ in lock_entries(extra):
        out.setdefault(name, set()).add(version)
    return out


@pytest.mark.parametrize("extra", lock_extras())
def test_every_pyproject_pin_is_locked_at_its_version(extra: str) -> None:
    locked = lock_versions(extra)
    for name, version in project_pins(extra).items():
        assert name in locked, f"requirements/{extra}.lock lacks {name}: run ./flowwatch lock"
        assert locked[name] == {version}, (
            f"pyproject.toml pins {name}=={version} but requirements/{extra}.lock has {sorted(locked[name])}: "
            "run ./flowwatch lock and commit the locks"
        )


@pytest.mark.parametrize("extra", lock_extras())
def test_every_locked_package_has_hashes_and_nothing_else_is_in_the_lock(extra: str) -> None:
    entries = lock_entries(extra)
    assert len(entries) > len(project_pins(extra)), "the lock pins the transitive dependencies too"
    for name, version, _, hashes in entries:
        assert hashes, f"requirements/{extra}.lock: {name}=={version} has no --hash (pip --require-hashes refuses it)"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{name}: a hash is not a sha256"
        assert name != "flowwatch", "the project itself is installed from the checkout with --no-deps, not locked"
    text = (LOCK_DIR / f"{extra}.lock").read_text()
    for leak in ("file:", "--index-url", "--extra-index-url", "--find-links", "/opt/", "/home/", "/root/"):
        assert leak not in text, f"requirements/{extra}.lock names a machine-local source ({leak!r}): re-lock with ./flowwatch lock"


def test_a_package_locked_twice_differs_only_by_python_marker() -> None:
    """--universal: where versions differ by Python (scipy on 3.11 and 3.12) each line carries a marker,
    so one lock serves this machine's Python and the image's python:3.12."""
    for extra in lock_extras():
        by_name: dict[str, list[str]] = {}
        for name, _, marker, _ in lock_entries(extra):
            by_name.setdefault(name, []).append(marker)
        for name, markers in by_name.items():
            if len(markers) > 1:
                assert all("python" in m for m in markers), f"{extra}.lock: {name} listed twice without a python marker"


def test_the_image_python_is_covered_by_the_locks() -> None:
    base = re.search(r"^FROM python:(\d+)\.(\d+)", (ROOT / "services" / "Dockerfile").read_text(), re.M)
    assert base, "services/Dockerfile: FROM python:X.Y expected"
    lowest = re.search(r"--python-version (\d+)\.(\d+)", (ROOT / "flowwatch").read_text())
    assert lowest and "--universal" in (ROOT / "flowwatch").read_text()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={lowest.group(1)}.{lowest.group(2)}", "lock for the lowest Python the project supports"
    assert (int(base.group(1)), int(base.group(2))) >= (int(lowest.group(1)), int(lowest.group(2)))


def test_bump_without_relock_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above fails for a pyproject pin that the lock does not match (it can fail)."""
    text = (ROOT / "pyproject.toml").read_text()
    bumped = text.replace('"paho-mqtt==2.2.0"', '"paho-mqtt==2.2.1"')
    assert bumped != text, "paho-mqtt's pin moved: update this test"
    (tmp_path / "pyproject.toml").write_text(bumped)
    (tmp_path / "flowwatch").write_text((ROOT / "flowwatch").read_text())
    (tmp_path / "requirements").symlink_to(LOCK_DIR)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="run ./flowwatch lock"):
        test_every_pyproject_pin_is_locked_at_its_version("detector")


def test_the_build_backend_is_locked_too() -> None:
    """The project is built with --no-build-isolation from requirements/build.lock (pyproject's
    build-system.requires), so no setuptools of the day takes part in a build."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    locked = lock_versions("build")
    for req in requires:
        name = canonical(re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0])
        assert name in locked and len(locked[name]) == 1, f"requirements/build.lock lacks {name}: run ./flowwatch lock"
    for name, version, _, hashes in lock_entries("build"):
        assert hashes, f"build.lock: {name}=={version} has no hash"
    assert int(next(iter(locked["setuptools"])).split(".")[0]) >= 77


def test_the_bootstrap_installs_from_the_locks() -> None:
    """./flowwatch (test, up and every other command) installs the lock of its extra with hashes, then the
    project without dependencies; a fresh clone running it is the CI run (.ci/run)."""
    script = (ROOT / "flowwatch").read_text()
    assert 'lock="requirements/$1.lock"' in script
    assert 'pip install -q --require-hashes -r "$lock" -r requirements/build.lock' in script
    assert "pip install -q --no-deps --no-build-isolation -e ." in script
    assert 'pip install -q -e ".[' not in script, "an install that resolves dependencies itself bypasses the lock"
    for extra in re.findall(r"python_env (\w+)", script):
        assert extra in lock_extras(), f"./flowwatch installs {extra} but ./flowwatch lock does not write its lock"
