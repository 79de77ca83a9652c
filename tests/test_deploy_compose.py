"""docker-compose.yml and services/Dockerfile (one for the five services, chosen by build args), checked
without a Docker engine (none on these machines): the files are parsed, the shell strings run here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from app.credentials import SERVICE_UIDS, SERVICES
from shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ONE_SHOT = {"init", "central-init"}  # run to completion; the others wait for service_completed_successfully
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


def test_mosquitto_image_is_the_newest_2_0(compose: dict) -> None:
    """2.0.22 or later: 2.0.20 and older miss security fixes."""
    m = re.fullmatch(r"eclipse-mosquitto:(\d+)\.(\d+)\.(\d+)", compose["services"]["mosquitto"]["image"])
    assert m and (2, 0, 22) <= tuple(int(g) for g in m.groups()) < (3,)


def memory_limit(svc: dict) -> int | None:
    """A service's memory limit in bytes (``mem_limit`` or ``deploy.resources.limits.memory``)."""
    value = svc.get("mem_limit") or (((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory")
    if value is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(value).strip().lower())
    assert m, f"unreadable memory limit {value!r}"
    return int(float(m.group(1)) * 1024 ** "bkmg".index(m.group(2) or "b"))


# RSS targets of the brief (§12), MB; the limit leaves at least half as much again as headroom.
RSS_TARGET_MB = {"collector": 80, "detector": 80, "exporter": 80, "forecaster": 150}


def test_every_container_has_a_memory_limit(compose: dict) -> None:
    from app.broker import project_setting

    services = compose["services"]
    limits = {name: memory_limit(svc) for name, svc in services.items()}
    assert all(limits.values()), f"no memory limit: {[n for n, v in limits.items() if not v]}"
    for name, target in RSS_TARGET_MB.items():
        assert limits[name] >= 1.5 * target * 2**20, f"{name}: {limits[name] / 2**20:.0f} MiB leaves no headroom over {target} MB"
        assert limits[name] <= 4 * target * 2**20, f"{name}: {limits[name] / 2**20:.0f} MiB does not bound a leak"
    assert limits["trainer"] >= 1.5 * 1100 * 2**20  # TensorFlow, a year of windows: 1.1 GB peak (bench.train)
    # the broker refuses memory (mosquitto.conf memory_limit) before its container is killed, and the
    # queue bound fits well inside: ~3.3 bytes of memory per payload byte queued (measured), 4 sessions
    assert int(project_setting("memory_limit")) < limits["mosquitto"]
    assert 3.3 * int(project_setting("max_queued_bytes")) * 1.6 < int(project_setting("memory_limit"))


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


DOCKERFILE = ROOT / "services" / "Dockerfile"
BUILD_ARGS = {"SERVICE", "EXTRA", "SERVICE_UID"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of services/Dockerfile, continuation lines joined as Docker does."""
    text = DOCKERFILE.read_text().replace("\\\n", "")
    lines = [ln.strip() for ln in text.splitlines()]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines if ln and not ln.startswith("#")]


def only(kind: str) -> str:
    found = [rest for k, rest in instructions() if k == kind]
    assert len(found) == 1, f"one {kind} expected, found {found}"
    return found[0]


def substitute(value: str, args: dict[str, str]) -> str:
    """Docker's build-time ${ARG} / $ARG replacement (USER, ENV)."""
    return re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def fake_flowwatch(tmp_path: Path) -> dict[str, str]:
    """An environment whose `flowwatch` prints its umask and arguments, for running the image's shell
    strings (ENTRYPOINT, HEALTHCHECK) here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "flowwatch"
    exe.write_text('#!/bin/sh\necho "$(umask) $*"\n')
    exe.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_one_dockerfile_for_the_five_services() -> None:
    assert not list((ROOT / "services").glob("*/Dockerfile")), "the services share services/Dockerfile"
    steps = instructions()
    kinds = [k for k, _ in steps]
    declared = [rest.split("=")[0] for k, rest in steps if k == "ARG"]
    assert sorted(declared) == sorted(BUILD_ARGS)
    deps = next(i for i, (k, rest) in enumerate(steps) if k == "RUN" and "pip install --require-hashes -r" in rest)
    source = steps.index(("COPY", "shared ./shared"))
    # dependencies in a layer before the source; only EXTRA is declared before it (the cache key)
    assert deps < source
    assert [rest for k, rest in steps[:deps] if k == "ARG"] == ["EXTRA"]
    assert steps.index(("COPY", "requirements ./requirements")) < deps  # the locks: nothing else is needed
    assert [rest for k, rest in steps[:deps] if k == "COPY"] == ["requirements ./requirements"]
    # then the project from the checkout, without touching the locked dependencies
    # (built with the locked setuptools: requirements/build.lock, installed in the dependency layer)
    assert any(k == "RUN" and "pip install --no-deps --no-build-isolation ." in rest for k, rest in steps[source:])
    # the packages the image installs, the one of the `flowwatch` entry point among them (app/: the
    # image runs `flowwatch SERVICE`; its healthcheck, `python -m shared.health SERVICE`)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry = project["project"]["scripts"]["flowwatch"].split(".")[0]
    for pkg in ("shared", "services", entry):
        assert ("COPY", f"{pkg} ./{pkg}") in steps, f"the image lacks {pkg}/"
        assert f"{pkg}*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    # nothing service-specific is written in the file: it all comes from the build args
    text = DOCKERFILE.read_text()
    for name in SERVICES:
        assert f"['{name}']" not in text and f'"{name}"' not in text, name
    # non-root user in the flowwatch group; the service name is kept for run time
    assert only("USER") == "${SERVICE_UID}:10000"
    assert ("ENV", "FLOWWATCH_SERVICE=${SERVICE}") in steps
    assert kinds.index("USER") > source and "CMD" not in kinds  # the entrypoint runs the service


@pytest.mark.parametrize("name", SERVICES)
def test_compose_builds_each_service_with_its_extra_and_uid(compose: dict, name: str) -> None:
    build = compose["services"][name]["build"]
    assert build["context"] == "." and build["dockerfile"] == "services/Dockerfile"
    args = {k: str(v) for k, v in build["args"].items()}
    assert set(args) == BUILD_ARGS, f"{name}: every ARG of services/Dockerfile is given"
    assert args["SERVICE"] == name and args["EXTRA"] == name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert args["EXTRA"] in project["optional-dependencies"]
    # non-root: the uid that owns its MQTT password, in the flowwatch group
    assert args["SERVICE_UID"] == str(SERVICE_UIDS[name]) and int(args["SERVICE_UID"]) != 0
    assert substitute(only("USER"), args) == f"{SERVICE_UIDS[name]}:10000"
    user = next(rest for k, rest in instructions() if k == "RUN" and "useradd" in rest)
    assert '--uid "$SERVICE_UID" --gid 10000' in user and user.rstrip().split()[-1] != "root"
    assert f"useradd --uid {SERVICE_UIDS[name]} --gid 10000" in substitute(user, args).replace('"', "")
    # the image the init service runs is the detector's, built the same way
    if name == "detector":
        init = compose["services"]["init"]
        assert init["build"] == build and init["image"] == compose["services"][name]["image"]


@pytest.mark.parametrize("name", SERVICES)
def test_the_dependency_layer_installs_only_the_service_extra(name: str, tmp_path: Path) -> None:
    """The layer installs requirements/EXTRA.lock with hashes: the core and the service's own pins, not
    another service's (tensorflow stays out of the collector's image); tests/test_lock.py checks the
    locks against pyproject.toml."""
    from tests.test_lock import lock_versions, project_pins

    run = next(rest for k, rest in instructions() if k == "RUN" and "pip install --require-hashes -r" in rest)
    script = run.replace("pip install --require-hashes -r", "echo")
    env = {"PATH": "/usr/bin:/bin", "EXTRA": name}
    out = subprocess.run(["/bin/sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [f"requirements/{name}.lock", "requirements/build.lock"]
    locked = lock_versions(name)
    own = project_pins(name)
    assert set(own) <= set(locked)
    stray = ({n for e in SERVICES for n in project_pins(e)} - set(own)) & set(locked)
    assert not stray, f"{name}'s image would carry other services' dependencies: {sorted(stray)}"
    # without the build arg, or for an extra without a lock, the build stops
    env.pop("EXTRA")
    assert subprocess.run(["/bin/sh", "-c", script], cwd=ROOT, env=env, capture_output=True).returncode != 0
    env["EXTRA"] = "nosuchextra"
    err = subprocess.run(["/bin/sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert err.returncode != 0 and "./flowwatch lock" in err.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_the_image_runs_and_checks_its_service(name: str, tmp_path: Path) -> None:
    env = fake_flowwatch(tmp_path) | {"FLOWWATCH_SERVICE": name}
    entrypoint = json.loads(only("ENTRYPOINT"))
    assert entrypoint[:2] == ["/bin/sh", "-c"]

    def run(*argv: str) -> str:
        return subprocess.run([*entrypoint, *argv], env=env, capture_output=True, text=True, check=True).stdout.strip()

    # no arguments (docker compose up): the service, with umask 002 for the shared volumes
    assert run() == f"0002 {name}"
    # arguments are `flowwatch` arguments
    assert run("health", name) == f"0002 health {name}"
    # HEALTHCHECK: shell form (CMD-SHELL) so that $FLOWWATCH_SERVICE is expanded when it runs; the
    # cheap probe (the kernel module, standard library only), run here for real from the image's
    # working directory (the repository root): unhealthy without a heartbeat, healthy with one
    health = only("HEALTHCHECK")
    assert "--interval=15s" in health and "--start-period=60s" in health
    check = health.split(" CMD ", 1)[1]
    assert not check.startswith("[") and check == 'python -m shared.health "$FLOWWATCH_SERVICE"'
    assert ("WORKDIR", "/app") in instructions() and ("COPY", "shared ./shared") in instructions()
    data = tmp_path / "data"
    probe_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "FLOWWATCH_SERVICE": name, "FLOWWATCH_DATA_DIR": str(data)}
    out = subprocess.run(["/bin/sh", "-c", check], env=probe_env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout.startswith(f"{name}: unhealthy: no heartbeat"), out
    (data / "health").mkdir(parents=True)
    (data / "health" / f"{name}.json").write_text(json.dumps({"service": name, "state": "online", "failing": {}}))
    out = subprocess.run(["/bin/sh", "-c", check], env=probe_env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith(f"{name}: healthy"), out


@pytest.mark.parametrize("name", SERVICES)
def test_compose_checks_each_service_with_the_cheap_probe(compose: dict, name: str) -> None:
    """The compose healthcheck of a service is the Dockerfile's: the kernel module, not the whole CLI."""
    hc = compose["services"][name]["healthcheck"]
    assert hc["test"] == ["CMD", "python", "-m", "shared.health", name]
    assert hc["interval"] == "15s" and hc["retries"] == 3


ENV_EXAMPLE = ROOT / ".env.example"


def env_examples() -> dict[str, dict[str, str]]:
    """The meter examples of .env.example (``# example: NAME - ...`` then ``#KEY=VALUE`` lines), each
    as the variables compose reads from .env once the lines are uncommented (single quotes: literal)."""
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"# example: ([\w-]+)", line):
            current = out.setdefault(m.group(1), {})
        elif current is not None and (m := re.fullmatch(r"#([A-Z0-9_]+)=(.*)", line)):
            value = m.group(2)
            current[m.group(1)] = value[1:-1] if value[:1] == value[-1:] == "'" and len(value) > 1 else value
        elif not line.startswith("#") or line.strip() == "#":
            current = None
    return out


def render(value: str, dotenv: dict[str, str]) -> str:
    """Compose variable interpolation with the values of a .env file."""
    return VAR.sub(lambda m: dotenv.get(m.group(1)) or m.group(2) or "", value)


def test_env_example_shows_serial_modbus_rtu_with_two_units_and_modbus_tcp() -> None:
    ex = env_examples()
    assert set(ex) >= {"serial", "modbus-rtu", "modbus-tcp"}
    assert ex["serial"]["FLOWWATCH_METER_SOURCE"] == "serial" and ex["serial"]["FLOWWATCH_SERIAL_DEVICE"]
    assert ex["modbus-rtu"]["FLOWWATCH_METER_SOURCE"] == "modbus-rtu"
    units = [m["modbus"]["unit_id"] for m in json.loads(ex["modbus-rtu"]["FLOWWATCH_METERS"])]
    assert len(units) == 2 and len(set(units)) == 2
    assert ex["modbus-tcp"]["FLOWWATCH_METER_SOURCE"] == "modbus-tcp" and ex["modbus-tcp"]["FLOWWATCH_MODBUS_HOST"]


@pytest.mark.parametrize("example", ["serial", "modbus-rtu", "modbus-tcp"])
def test_the_meter_source_and_device_in_env_are_enough(compose: dict, example: str, tmp_path: Path) -> None:
    """The compose config of the collector rendered with each .env.example meter: `flowwatch config
    check` accepts it, the source reads the passed-through device (/dev/meter) or the TCP host, every
    meter of the list is there, and the broker ACL the init service writes lets the collector publish
    for each of them."""
    from app.broker import render_acl
    from shared.topics import Topics

    dotenv = env_examples()[example]
    coll = compose["services"]["collector"]
    device = render(next(d for d in coll["devices"] if d.endswith(":/dev/meter")), dotenv).rsplit(":", 1)[0]
    assert device == dotenv.get("FLOWWATCH_SERIAL_DEVICE", "/dev/null")
    env = {k: render(str(v), dotenv) for k, v in coll["environment"].items()}
    mounts = {render(v, dotenv).split(":")[1]: render(v, dotenv).split(":")[0] for v in coll["volumes"]}
    config = ROOT / mounts[env.pop("FLOWWATCH_CONFIG")]
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    run_env = base | env
    out = subprocess.run([sys.executable, "-m", "app.cli", "config", "check", str(config)], env=run_env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    effective = yaml.safe_load(out.stdout)
    c = effective["collector"]
    assert c["source"] == dotenv["FLOWWATCH_METER_SOURCE"]
    if example == "serial":
        assert c["serial"]["port"] == "/dev/meter"
    elif example == "modbus-rtu":
        assert c["modbus"]["port"] == "/dev/meter"
    else:
        assert c["modbus"]["host"] == dotenv["FLOWWATCH_MODBUS_HOST"]
    listed = json.loads(dotenv.get("FLOWWATCH_METERS", "[]"))
    meters = [m["id"] for m in effective["meters"]]
    assert meters == ([m["id"] for m in listed] or [effective["meter"]])
    # every other service validates the same meters with its own environment (a meter's own source
    # needs its port or host there too)
    for name in SERVICES:
        svc_env = {k: render(str(v), dotenv) for k, v in compose["services"][name]["environment"].items()}
        svc_env.pop("FLOWWATCH_CONFIG")
        svc_env["FLOWWATCH_METERS"] = json.dumps([{**m, "source": dotenv["FLOWWATCH_METER_SOURCE"]} for m in listed] or [
            {"id": "meter1", "source": dotenv["FLOWWATCH_METER_SOURCE"]}])  # each meter naming its source
        out = subprocess.run([sys.executable, "-m", "app.cli", "config", "check", str(config)], env=base | svc_env,
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
    # the init service renders the ACL from the same variables (x-env): every meter may be published
    init_env = {k: render(str(v), dotenv) for k, v in compose["services"]["init"]["environment"].items()}
    assert init_env.get("FLOWWATCH_METERS", "") == dotenv.get("FLOWWATCH_METERS", "")
    acl = render_acl([(effective["site"], m) for m in meters])
    for m in meters:
        assert f"topic write {Topics().reading(effective['site'], m)}" in acl
