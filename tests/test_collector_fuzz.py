"""Property-based fuzzing of serial frames: the pure parser, then the live service path on a pty."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.collector.frames import FrameError, ParsedFrame, checksum, parse_frame
from shared.settings import FrameFormat

DELIMITED = FrameFormat()
REGEX_CHECKED = FrameFormat(
    kind="regex", regex=r"^F=(?P<f>[^;]*);P=(?P<p>.*)$", flow_rate={"group": "f", "scale": 3.6}, pressure={"group": "p", "scale": 0.01},
    checksum={"kind": "xor8", "separator": "*"},
)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-Infinity", "1e999", "-1e-999", "1_000", "0x1F", "", " ", "--", "١٢٣", "12,5", "3.4.5"]),
    st.text(max_size=12),
)
separators = st.sampled_from([",", ";", " ", "\t", ",,", "", "|", ", "])


@st.composite
def frames(draw) -> bytes:
    kind = draw(st.sampled_from(["binary", "fields", "truncated", "mangled", "checked"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    fields = draw(st.lists(numbers, min_size=0, max_size=4))
    text = draw(separators).join(fields)
    if kind == "checked":
        body = f"F={draw(numbers)};P={draw(numbers)}"
        cs = checksum("xor8", body.encode("utf-8", "replace")) ^ draw(st.sampled_from([0, 0, 1]))
        text = f"{body}*{cs:02X}"
    raw = text.encode("utf-8", errors="surrogatepass") + draw(st.sampled_from([b"\n", b"\r\n", b"", b"\r"]))
    if kind == "truncated":
        raw = raw[: draw(st.integers(0, max(0, len(raw))))]
    if kind == "mangled" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + draw(st.binary(min_size=1, max_size=4)) + raw[i + 1 :]
    return raw


def check(raw: bytes, fmt: FrameFormat) -> None:
    try:
        p = parse_frame(raw, fmt)
    except FrameError as exc:
        assert exc.reason and exc.raw == raw
        return
    assert isinstance(p, ParsedFrame)
    for v in (p.flow_rate, p.pressure):
        assert v is None or (isinstance(v, float) and math.isfinite(v))


@settings(max_examples=2500, deadline=None)
@given(frames())
def test_parser_never_crashes_delimited(raw):
    check(raw, DELIMITED)


@settings(max_examples=1000, deadline=None)
@given(frames())
def test_parser_never_crashes_regex_with_checksum(raw):
    check(raw, REGEX_CHECKED)


# --- the service path: the same frames through a pty into the running collector -----------------


@pytest.fixture(scope="module")
def live(broker, tmp_path_factory):
    from app.broker import mqtt_settings
    from tests.meters import PtyPair
    from tests.test_collector_service import Listener, collector_settings, start, stop

    mqtt = mqtt_settings(broker)
    pty = PtyPair()
    lis = Listener(mqtt, "fuzz", "lis-fuzz")
    s = collector_settings(tmp_path_factory.mktemp("fuzz"), mqtt, "fuzz", source="serial", interval_s=1, serial={"port": pty.port, "timeout_s": 0.5})
    svc, t = start(s)
    assert svc.source_opened.wait(10)
    yield svc, pty, lis
    stop(svc, t)
    lis.close()
    pty.close()


line_frames = frames().map(lambda b: b.replace(b"\n", b"")[:300] + b"\n")


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(line_frames, min_size=1, max_size=20))
def test_service_counts_and_dead_letters_every_bad_frame(live, batch):
    from tests.harness import wait_for

    svc, pty, lis = live
    bad = []
    for raw in batch:
        try:
            parse_frame(raw, svc.settings.collector.serial.frame)
        except FrameError:
            bad.append(raw)
    read0, rej0, dead0 = svc.counters.get("frames_read"), svc.counters.get("rejected"), len(lis.dead)
    pty.write(b"".join(batch))
    assert wait_for(lambda: svc.counters.get("frames_read") >= read0 + len(batch), 10), svc.counters.snapshot()
    assert svc.counters.get("frames_read") == read0 + len(batch)
    assert svc.counters.get("rejected") == rej0 + len(bad)
    assert wait_for(lambda: len(lis.dead) >= dead0 + len(bad), 10)
    with lis.lock:
        got = [bytes.fromhex(d.payload_hex) for d in lis.dead[dead0:]]
    assert got == bad
    assert svc.source_opened.is_set() and svc.counters.get("io_errors") == 0
