"""Per-meter range limits (issue 15): meters[].limits merged over the box's `limits`."""

import pytest

from shared.settings import RangeLimits, Settings, format_errors, load_settings


def test_a_meters_limits_are_merged_over_the_boxs():
    s = Settings(limits={"flow_rate_max": 800, "pressure_max": 10, "max_ahead_s": 60},
                 meters=[{"id": "amr", "limits": {"flow_rate_max": 50}}, {"id": "inlet", "limits": {"flow_rate_min": 5, "pressure_max": 12}},
                         {"id": "plain"}])
    amr, inlet = s.limits_of("amr"), s.limits_of("inlet")
    assert (amr.flow_rate_min, amr.flow_rate_max, amr.pressure_min, amr.pressure_max) == (0, 50, 0, 10)
    assert (inlet.flow_rate_min, inlet.flow_rate_max, inlet.pressure_max) == (5, 800, 12)
    assert amr.max_ahead_s == inlet.max_ahead_s == 60  # the time windows stay the box's
    assert s.limits_of("plain") is s.limits
    assert s.limits.flow_rate_max == 800  # the box's own section is untouched


def test_limits_of_a_meter_not_configured_here_is_the_boxs():
    s = Settings(limits={"flow_rate_max": 300}, meters=[{"id": "amr", "limits": {"flow_rate_max": 50}}])
    assert s.limits_of("another-box-meter") is s.limits
    assert Settings().limits_of("meter1") == RangeLimits()


def test_meter_limits_from_a_config_file(tmp_path):
    cfg = tmp_path / "fw.yaml"
    cfg.write_text("limits:\n  flow_rate_max: 2000\nmeters:\n  - id: dn300\n  - id: amr\n    limits: {flow_rate_max: 50}\n")
    s = load_settings(cfg)
    assert s.limits_of("dn300").flow_rate_max == 2000 and s.limits_of("amr").flow_rate_max == 50


@pytest.mark.parametrize("key", ["earliest", "max_ahead_s", "max_jump_s", "max_meters_per_site"])
def test_a_box_wide_key_under_a_meter_is_an_error_naming_it(key):
    with pytest.raises(ValueError) as err:
        Settings(meters=[{"id": "a"}, {"id": "b", "limits": {"flow_rate_max": 50, key: 5}}])
    (line,) = format_errors(err.value)
    assert f"meters[1].limits.{key} is box-wide: set it under limits" in line


def test_an_unknown_key_under_a_meters_limits_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"meters\[0\]\.limits\.flow_max is not a key of limits; a meter may set only flow_rate_min"):
        Settings(meters=[{"id": "a", "limits": {"flow_max": 50}}])


@pytest.mark.parametrize(("own", "says"), [
    ({"flow_rate_max": 0}, "flow_rate_min must be below flow_rate_max"),  # the box's min 0 with the meter's max
    ({"flow_rate_min": 60, "flow_rate_max": 50}, "flow_rate_min must be below flow_rate_max"),
    ({"pressure_min": 20}, "pressure_min must be below pressure_max"),  # against the box's pressure_max 16
])
def test_merged_limits_that_are_not_ordered_name_the_meter(own, says):
    with pytest.raises(ValueError) as err:
        Settings(meters=[{"id": "a"}, {"id": "small", "limits": own}])
    (line,) = format_errors(err.value)
    assert "meters[1] (small): its limits keys merged over limits are not valid" in line and says in line


def test_a_meter_limit_must_be_a_number():
    with pytest.raises(ValueError) as err:
        Settings(meters=[{"id": "a", "limits": {"flow_rate_max": "lots"}}])
    assert any(line.startswith("meters.0.limits.flow_rate_max:") for line in format_errors(err.value))
