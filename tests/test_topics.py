import pytest

from shared.topics import TopicError, Topics, check_publish_topic

t = Topics()


def test_meter_topics():
    assert t.reading("s1", "m1") == "flowwatch/v1/s1/m1/reading"
    assert t.export("s1", "m1", "alert") == "flowwatch/v1/s1/m1/export/alert"
    assert t.status("detector") == "flowwatch/v1/service/detector/status"
    assert t.deadletter("detector") == "flowwatch/v1/deadletter/detector"
    assert t.all_meters("reading") == "flowwatch/v1/+/+/reading"
    assert t.model("s1", "m1", "pressure") == "flowwatch/v1/s1/m1/model/pressure"
    assert t.thresholds("s1", "m1", "flow_rate") == "flowwatch/v1/s1/m1/thresholds/flow_rate"
    assert t.signal_filter("s1", "m1", "model") == "flowwatch/v1/s1/m1/model/+"
    assert t.all_meters("thresholds") == "flowwatch/v1/+/+/thresholds/+"


@pytest.mark.parametrize("site", ["+", "#", "a/b", "", "a b"])
def test_rejects_wildcards_and_separators(site):
    with pytest.raises(TopicError):
        t.reading(site, "m1")


@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "", "a//b"])
def test_publish_topic_check(topic):
    with pytest.raises(TopicError):
        check_publish_topic(topic)


def test_parse_meter():
    assert t.parse_meter("flowwatch/v1/s1/m1/export/server") == ("s1", "m1", "export/server")
    assert t.parse_meter("flowwatch/v1/service/x/status") is None
    assert t.parse_meter("other/s/m/reading") is None


def test_unknown_kind():
    with pytest.raises(TopicError):
        t.meter("s", "m", "readings")
