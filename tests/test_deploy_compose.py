"""docker-compose.yml and the Dockerfiles, checked without a Docker engine (none on these machines)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from app.credentials import SERVICE_UIDS, SERVICES
from shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ONE_SHOT = {"init"}  # runs to completion; the others wait for service_completed_successfully
VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def resolve(value: str) -> str:
    """Compose variable interpolation with the defaults (no .env)."""
    return VAR.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_service_has_an_image_or_build_and_a_healthcheck(compose: dict) -> None:
    services = compose["services"]
    assert set(SERVICES) | {"mosquitto", "influxdb", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            b = svc["build"]
            assert (ROOT / b["context"]).is_dir(), name
            assert (ROOT / b["context"] / b["dockerfile"]).is_file(), f"{name}: {b['dockerfile']} missing"
        if name in ONE_SHOT:
            assert svc.get("restart") == "no"
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"


def test_third_party_images_are_pinned(compose: dict) -> None:
    images = {n: s["image"] for n, s in compose["services"].items() if "build" not in s}
    assert re.fullmatch(r"eclipse-mosquitto:2\.\d+\.\d+", images["mosquitto"])
    assert re.fullmatch(r"influxdb:2\.7(\.\d+)?", images["influxdb"])
    assert re.fullmatch(r"grafana/grafana(-oss)?:\d+\.\d+\.\d+", images["grafana"])


def test_dependencies_wait_for_health(compose: dict) -> None:
    services = compose["services"]
    for name in SERVICES:
        deps = services[name]["depends_on"]
        assert deps["mosquitto"]["condition"] == "service_healthy"
        assert deps["influxdb"]["condition"] == "service_healthy"
        assert deps["init"]["condition"] == "service_completed_successfully"
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == want, (name, dep)


def test_volumes_and_files_exist(compose: dict) -> None:
    declared = set(compose["volumes"])
    for need in ("broker-data", "store", "models", "exports", "secrets"):
        assert need in declared
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = resolve(vol).split(":", 1)[0]
            if source.startswith(("/", ".")):
                assert (ROOT / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
    exporter = compose["services"]["exporter"]["volumes"]
    assert any(v.startswith("${FLOWWATCH_EXPORTS:-exports}:") for v in exporter), "exports must be bind-mountable"


def test_no_secret_is_written_in_the_compose_file(compose: dict) -> None:
    text = COMPOSE.read_text()
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|TOKEN|SECRET|(^|_)KEY$", key) and not key.endswith(("_FILE", "__FILE")):
                pytest.fail(f"{name}: {key} is set in the compose file; use a generated secret file")
            assert not re.fullmatch(r"[A-Za-z0-9_\-]{24,}", str(value)), f"{name}: {key} looks like a secret"
    # nothing that looks like a literal credential anywhere (passwords come from files)
    assert not re.search(r"(?i)(password|token)\s*[:=]\s*['\"]?[A-Za-z0-9]", text.replace("PASSWORD_FILE", "").replace("__FILE", ""))
    assert "$$(cat /run/flowwatch-secrets/influxdb/token)" in text


def test_service_environment_builds_valid_settings(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVICES:
        svc = compose["services"][name]
        mounts = {resolve(v).split(":")[1]: resolve(v).split(":")[0] for v in svc["volumes"]}
        for k in list(__import__("os").environ):
            if k.startswith("FLOWWATCH_"):
                monkeypatch.delenv(k)
        env = {k: resolve(str(v)) for k, v in svc["environment"].items()}
        config = mounts[env.pop("FLOWWATCH_CONFIG")]
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s = load_settings(ROOT / config)
        assert s.mqtt.username == name and s.mqtt.host == "mosquitto"
        assert str(s.mqtt.password_file) == f"/run/flowwatch-secrets/mqtt/{name}.password"
        assert s.mqtt.password is None
        assert s.store.backend == "influxdb" and s.store.influxdb.token is None
        assert s.store.influxdb.token_file is not None
        assert str(s.data_dir) == "/data" and mounts["/data"] == "store"


def test_collector_gets_the_serial_device_and_trainer_a_cpu_limit(compose: dict) -> None:
    coll = compose["services"]["collector"]
    assert any(resolve(d).endswith(":/dev/meter") for d in coll["devices"])
    trainer = compose["services"]["trainer"]
    assert float(trainer.get("cpus") or trainer["deploy"]["resources"]["limits"]["cpus"]) <= 1.0


def test_influxdb_setup_creates_a_365_day_bucket(compose: dict) -> None:
    env = compose["services"]["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert env["DOCKER_INFLUXDB_INIT_RETENTION"] == "365d"
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == yaml.safe_load((ROOT / "config/flowwatch.yaml").read_text())["store"]["influxdb"]["database"]


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile(name: str) -> None:
    text = (ROOT / "services" / name / "Dockerfile").read_text()
    # dependencies in a layer before the source
    assert text.index("pip install -r") < text.index("COPY shared")
    # the packages the image installs, the one of the `flowwatch` entry point among them (app/: the
    # image runs `flowwatch SERVICE` and `flowwatch health SERVICE`)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry = project["project"]["scripts"]["flowwatch"].split(".")[0]
    for pkg in ("shared", "services", entry):
        assert f"COPY {pkg} ./{pkg}" in text, f"{name}: the image lacks {pkg}/"
        assert f"{pkg}*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    # only this service's extra
    assert f"['optional-dependencies']['{name}']" in text
    others = [o for o in SERVICES if o != name]
    assert not any(f"['{o}']" in text for o in others)
    # non-root, the uid that owns its MQTT password
    assert re.search(rf"^USER {SERVICE_UIDS[name]}:10000$", text, re.M)
    assert 'HEALTHCHECK' in text and f'"flowwatch", "health", "{name}"' in text
    assert f'CMD ["{name}"]' in text
