"""Property-based fuzzing of the inputs every service takes: MQTT payloads of every kind and
config files. No crash; every rejection is a validation error with a reason (and, through the real
bus, a counter and a dead-letter entry)."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.bus import Bus
from shared.messages import (
    Anomaly,
    Command,
    DeadLetter,
    ExportRecord,
    Forecast,
    ModelInfo,
    Reading,
    ServiceStatus,
    Thresholds,
)
from shared.settings import ConfigFileError, load_settings
from tests.test_messages import EXAMPLES

pytestmark = pytest.mark.faults

KINDS = [Reading, Anomaly, Forecast, Thresholds, ModelInfo, ServiceStatus, ExportRecord, Command]
VALID = {type(m): json.loads(m.to_json()) for m in EXAMPLES}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["2026-03-01T00:00:00Z", "2026-03-01T00:00:00", "NaN", "", "+", "#", "a/b", "flow_rate"]),
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=8)


@st.composite
def mutated(draw, kind):
    """A valid payload of ``kind`` with a few keys dropped, retyped or added."""
    doc = dict(VALID[kind])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "set", "add"]))
        keys = list(doc)
        if op == "drop" and keys:
            doc.pop(draw(st.sampled_from(keys)))
        elif op == "set" and keys:
            doc[draw(st.sampled_from(keys))] = draw(values)
        else:
            doc[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return doc


def _encode(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()  # NaN/Infinity tokens on purpose


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@hsettings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_payload_fuzz_never_crashes(kind, data):
    payload = data.draw(st.one_of(mutated(kind).map(_encode), st.binary(max_size=200)))
    try:
        kind.model_validate_json(payload)
    except ValidationError as exc:
        assert exc.errors() and all(e["msg"] for e in exc.errors())


@hsettings(max_examples=1000, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["site", "meter", "timezone", "mqtt", "store", "collector", "detector",
                                            "forecaster", "exporter", "trainer", "models", "limits", "bogus"]), values, max_size=5))
def test_config_fuzz_never_crashes(tmp_path_factory, doc):
    f = tmp_path_factory.mktemp("cfg") / "fw.yaml"
    f.write_text(yaml.safe_dump(doc))
    try:
        load_settings(f)
    except (ValidationError, ConfigFileError) as exc:
        assert str(exc)


@hsettings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
@example(text="?")  # a YAML mapping with an empty key: once a TypeError
@example(text="[" * 5000)  # once a RecursionError
@example(text="site: a\nsite: b\n")  # once the last one won without a word
def test_config_text_fuzz(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("cfg") / "fw.yaml"
    f.write_text(text)
    try:
        load_settings(f)
    except (ValidationError, ConfigFileError):
        pass


def test_bus_fuzz_every_rejection_counted_and_dead_lettered(mqtt):
    """500 random payloads of every kind through a real Mosquitto to a subscriber."""
    import random

    rng = random.Random(7)
    handled, dead = [], []
    sub = Bus(mqtt, "fuzz-sub")
    for kind in KINDS:
        sub.subscribe(f"fuzz/{kind.__name__}", kind, lambda t, m: handled.append(m))
    assert sub.connect(10)
    watch = Bus(mqtt, "fuzz-watch")
    watch.subscribe(sub.topics.deadletter("fuzz-sub"), DeadLetter, lambda t, m: dead.append(m))
    assert watch.connect(10)
    pub = Bus(mqtt, "fuzz-pub")
    assert pub.connect(10)
    n = 0
    for kind in KINDS:
        for _ in range(60):
            doc = dict(VALID[kind])
            if rng.random() < 0.7:
                k = rng.choice(list(doc))
                doc[k] = rng.choice([None, "x" * 3, -1, 1e308 * 10, [], {"a": 1}, "2026-13-01T00:00:00Z"])
            payload = _encode(doc) if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
            pub.publish(f"fuzz/{kind.__name__}", payload)
            n += 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sub.counters.get("received") < n:
        time.sleep(0.05)
    assert sub.counters.get("received") == n
    rejected = sub.counters.get("rejected")
    assert rejected > 0 and len(handled) + rejected == n
    while time.monotonic() < deadline and len(dead) < rejected:
        time.sleep(0.05)
    assert len(dead) == rejected and all(d.reason for d in dead)
    for b in (sub, watch, pub):
        b.close()
