"""`flowwatch config check` on valid, typo'd and wrongly typed files (through the real CLI)."""

import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings, load_settings


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])


def test_valid_file_prints_effective_config(tmp_path):
    f = tmp_path / "fw.yaml"
    f.write_text("site: plant-a\nmqtt:\n  host: broker\n  password: s3cr3t-v4lue-xyz\nstore:\n  backend: sqlite\n")
    r = run_cli("config", "check", str(f))
    assert r.returncode == 0, r.stderr
    assert "site: plant-a" in r.stdout and "host: broker" in r.stdout
    assert "s3cr3t" not in r.stdout and "'**********'" in r.stdout


def test_typo_key_reports_path(tmp_path):
    f = tmp_path / "fw.yaml"
    f.write_text("mqtt:\n  hots: broker\n")
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2
    assert "mqtt.hots: unknown key" in r.stderr


def test_wrong_type_reports_path(tmp_path):
    f = tmp_path / "fw.yaml"
    f.write_text("mqtt:\n  port: lots\ncollector:\n  interval_s: 0\n")
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2
    assert "mqtt.port:" in r.stderr and "collector.interval_s:" in r.stderr


def test_not_yaml_mapping(tmp_path):
    f = tmp_path / "fw.yaml"
    f.write_text("- just\n- a list\n")
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and "mapping" in r.stderr


@pytest.mark.parametrize("text, key", [("?\n", "None"), ("1: x\n", "1")])
def test_a_key_that_is_not_a_name_is_a_clear_error(tmp_path, text, key):
    # found by the config fuzzer: YAML '?' is a mapping with an empty key
    f = tmp_path / "fw.yaml"
    f.write_text(text)
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and f"must be a setting name (text), not {key}" in r.stderr and "Traceback" not in r.stderr


def test_a_site_id_the_messages_refuse_is_refused_by_config_check(tmp_path):
    # once: a 65-character site passed `config check`, then the message model refused every reading
    f = tmp_path / "fw.yaml"
    f.write_text(f"site: {'s' * 65}\nmeter: m1\n")
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and "site: String should have at most 64 characters" in r.stderr, r.stderr
    f.write_text(f"site: {'s' * 64}\nmeter: m-1.a_B\n")
    r = run_cli("config", "check", str(f))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("key", ["site", "meter"])
@pytest.mark.parametrize("ident", ["s" * 64, "s" * 65, "", "a b", "a/b", "+", "#", "a\n", "plant-1.A_b", "é"])
def test_settings_messages_and_topics_accept_the_same_ids(key, ident):
    """One rule for a site or meter id: the settings accept one iff a Reading and a topic do."""
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from shared.messages import Reading
    from shared.topics import TopicError, Topics

    ids = {"site": "s1", "meter": "m1", key: ident}

    def accepts(make) -> bool:
        try:
            make()
        except (ValidationError, TopicError):
            return False
        return True

    verdicts = {
        "settings": accepts(lambda: Settings(**{key: ident})),
        "message": accepts(lambda: Reading(**ids, ts=datetime(2026, 3, 1, tzinfo=UTC), seq=0)),
        "topic": accepts(lambda: Topics().reading(**ids)),
    }
    assert len(set(verdicts.values())) == 1, verdicts


def test_a_config_file_over_1_mib_is_refused_naming_the_file_and_the_bound(tmp_path):
    f = tmp_path / "fw.yaml"
    f.write_text("site: plant-a\n" + "# padding\n" * 110_000)  # valid YAML, 1.1 MB
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and f"{f} is larger than 1,048,576 bytes (1 MiB)" in r.stderr, r.stderr
    f.write_text("site: plant-a\n" + "# padding\n" * 1_000)
    assert run_cli("config", "check", str(f)).returncode == 0


@pytest.mark.parametrize("text, where", [
    ("site: a\nmeter: m1\nsite: b\n", "line 3: key site is given twice (first on line 1)"),
    ("mqtt:\n  host: a\n  port: 1883\n  host: b\n", "line 4: key mqtt.host is given twice (first on line 2)"),
    ("mqtt: {host: a, 'host': b}\n", "line 1: key mqtt.host is given twice"),
    ("collector:\n  modbus:\n    registers:\n      - signal: flow_rate\n        address: 0\n        signal: pressure\n",
     "line 6: key collector.modbus.registers[0].signal is given twice (first on line 4)"),
])
def test_a_key_given_twice_is_an_error_naming_the_key_and_line(tmp_path, text, where):
    # PyYAML's SafeLoader keeps the last value without a word: 'host: b' won over 'host: a'
    f = tmp_path / "fw.yaml"
    f.write_text(text)
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and where in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_merge_key_override_is_not_a_duplicate(tmp_path):
    f = tmp_path / "fw.yaml"
    f.write_text("detector:\n  spike_min_abs: &m {flow_rate: 1.0, pressure: 0.1}\n"
                 "  threshold_min_spread:\n    <<: *m\n    pressure: 0.2\n")
    assert load_settings(f).detector.threshold_min_spread == {"flow_rate": 1.0, "pressure": 0.2}


@pytest.mark.parametrize("text", [
    "site: " + "[" * 5000 + "]" * 5000 + "\n",  # once a RecursionError traceback of 2,991 lines
    "mqtt:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)),
])
def test_deep_nesting_is_a_clear_error_not_a_traceback(tmp_path, text):
    f = tmp_path / "fw.yaml"
    f.write_text(text)
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and "nested deeper than 32 levels" in r.stderr, r.stderr[-500:]
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 2


def test_env_overrides_file(tmp_path, monkeypatch):
    f = tmp_path / "fw.yaml"
    f.write_text("mqtt:\n  host: from-file\n  port: 1000\n")
    monkeypatch.setenv("FLOWWATCH_MQTT__PORT", "2000")
    s = load_settings(f)
    assert (s.mqtt.host, s.mqtt.port) == ("from-file", 2000)


def test_an_environment_variable_that_is_not_json_is_named(monkeypatch):
    monkeypatch.setenv("FLOWWATCH_METERS", "[{")
    r = run_cli("config", "check")
    assert r.returncode == 2 and "FLOWWATCH_METERS is not valid" in r.stderr and "as JSON" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    monkeypatch.delenv("FLOWWATCH_METERS")
    monkeypatch.setenv("FLOWWATCH_COLLECTOR__SOURCE", "simulator")
    monkeypatch.setenv("FLOWWATCH_COLLECTOR__MODBUS__REGISTERS", "[")  # nested: the variable, not only its section
    r = run_cli("config", "check")
    assert r.returncode == 2 and "FLOWWATCH_COLLECTOR__MODBUS__REGISTERS is not valid" in r.stderr, r.stderr
    assert "FLOWWATCH_COLLECTOR__SOURCE" not in r.stderr


def test_placeholder_secret_refused():
    with pytest.raises(ValueError, match="placeholder"):
        Settings(mqtt={"password": "changeme"})


def test_bad_timezone():
    with pytest.raises(ValueError, match="time zone"):
        Settings(timezone="Mars/Olympus")


@pytest.mark.parametrize("text, line", [
    ("trainer:\n  models_dir: /srv/models\n", "trainer: models_dir moved to models.dir (FLOWWATCH_MODELS__DIR in the environment)"),
    ("trainer:\n  window_steps: 48\n", "trainer: window_steps moved to models.window_steps"),
    ("forecaster:\n  step_minutes: 15\n", "forecaster: step_minutes moved to models.step_minutes"),
    ("forecaster:\n  max_gap_minutes: 30\n", "forecaster: max_gap_minutes moved to models.max_gap_minutes"),
])
def test_moved_key_names_its_new_place(tmp_path, text, line):
    f = tmp_path / "fw.yaml"
    f.write_text(text)
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and line in r.stderr, r.stderr


def test_moved_key_from_the_environment_names_its_new_place(monkeypatch):
    monkeypatch.setenv("FLOWWATCH_TRAINER__MODELS_DIR", "/srv/models")
    with pytest.raises(ValueError, match="models_dir moved to models.dir"):
        load_settings()


def test_model_store_section(tmp_path, monkeypatch):
    f = tmp_path / "fw.yaml"
    f.write_text("models:\n  dir: /srv/models\n  step_minutes: 15\n  window_steps: 48\nforecaster:\n  horizon_minutes: 90\n")
    monkeypatch.setenv("FLOWWATCH_MODELS__MAX_GAP_MINUTES", "30")
    s = load_settings(f)
    assert (s.models.dir, s.models.step_minutes, s.models.window_steps, s.models.max_gap_minutes) == (Path("/srv/models"), 15, 48, 30)
    assert s.path(s.models.dir) == Path("/srv/models")


def test_horizon_must_be_whole_model_steps():
    with pytest.raises(ValueError, match=r"forecaster.horizon_minutes \(60\) must be a multiple of models.step_minutes \(25\)"):
        Settings(models={"step_minutes": 25})


def test_every_field_documented():
    from pydantic import BaseModel

    def walk(model: type[BaseModel], path: str):
        for name, field in model.model_fields.items():
            assert field.description, f"{path}{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{path}{name}.")

    walk(Settings, "")


def test_configuration_doc_is_current():
    from app.config_cmd import reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == reference(), "regenerate: flowwatch config doc > docs/configuration.md"
