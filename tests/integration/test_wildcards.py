"""Topic filters with '+' and '#' (MQTT 3.1.1 section 4.7)."""

import pytest

import mqttraw
from mqttraw import RawClient

TOPICS = ["a", "a/b", "a/b/c", "a/c", "b", "/a", "a/", "a//b", "x/a/b", "A/b"]

# filter -> topics (of TOPICS) it matches
CASES = {
    "#": set(TOPICS),
    "a/#": {"a", "a/b", "a/b/c", "a/c", "a/", "a//b"},  # "a/#" matches "a"
    "a/b/#": {"a/b", "a/b/c"},
    "+": {"a", "b"},
    "+/+": {"a/b", "a/c", "/a", "a/", "A/b"},
    "a/+": {"a/b", "a/c", "a/"},
    "+/b": {"a/b", "A/b"},
    "a/+/c": {"a/b/c"},
    "+/a/#": {"x/a/b", "/a"},
    "/+": {"/a"},
    "a//b": {"a//b"},
    "a/+/b": {"a//b"},
    "a": {"a"},
    "A/b": {"A/b"},
    "+/+/+": {"a/b/c", "a//b", "x/a/b"},
}

SENTINEL = "zz/end"


def test_wildcard_filters_match_as_specified(broker):
    subs = {}
    for i, flt in enumerate(CASES):
        c = RawClient(broker.port)
        c.connect("wc%d" % i)
        assert c.subscribe([(flt, 0), (SENTINEL, 0)]) == [0, 0]
        subs[flt] = c
    with RawClient(broker.port) as p:
        p.connect("wc-pub")
        for t in TOPICS:
            p.publish(t, t.encode())
        p.publish(SENTINEL, b"")
        p.ping()
    for flt, c in subs.items():
        got = []
        while True:
            m = c.expect(mqttraw.PUBLISH)
            if m.topic == SENTINEL and m.payload == b"":
                break
            got.append(m.topic)
        assert sorted(got) == sorted(CASES[flt]), flt
        c.close()


@pytest.mark.parametrize("flt", ["#", "+/x", "+/+", "+/#"])
def test_dollar_topics_not_matched_by_leading_wildcards(broker, flt):
    c = RawClient(broker.port)
    c.connect("dollar-wild")
    c.subscribe([(flt, 0)])
    with RawClient(broker.port) as p:
        p.connect("dollar-pub")
        p.publish("$test/x", b"d", qos=1)
        p.publish("plain/x", b"p", qos=1, pid=2)
    m = c.expect(mqttraw.PUBLISH)
    assert m.topic == "plain/x"
    # $SYS retained topics are not matched either.
    c.expect_silence(0.3)


def test_dollar_topics_matched_by_explicit_dollar_filters(broker):
    c = RawClient(broker.port)
    c.connect("dollar")
    c.subscribe([("$test/#", 0)])
    with RawClient(broker.port) as p:
        p.connect("dollar-pub")
        p.publish("$test/x", b"d", qos=1)
    assert c.expect(mqttraw.PUBLISH).topic == "$test/x"
    s = RawClient(broker.port)
    s.connect("sys")
    s.subscribe([("$SYS/#", 0)])
    m = s.expect(mqttraw.PUBLISH)
    assert m.topic.startswith("$SYS/")
