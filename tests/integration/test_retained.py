"""Retained messages (MQTT 3.1.1 section 3.3.1.3)."""

import clients
import mqttraw
from mqttraw import RawClient


def _publisher(port):
    p = RawClient(port)
    p.connect("ret-pub")
    return p


def _fresh_sub(port, cid, filters):
    c = RawClient(port)
    c.connect(cid)
    c.subscribe(filters)
    return c


def test_retained_delivered_on_subscribe_with_retain_flag(broker):
    with _publisher(broker.port) as p:
        p.publish("ret/a", b"stored", qos=1, retain=True)
    s = _fresh_sub(broker.port, "s", [("ret/a", 1)])
    m = s.expect_publish()
    assert (m.topic, m.payload, m.retain, m.qos) == ("ret/a", b"stored", True, 1)
    s.expect_silence(0.3)


def test_retained_replaced_by_newer(broker):
    with _publisher(broker.port) as p:
        p.publish("ret/b", b"old", qos=1, retain=True, pid=1)
        p.publish("ret/b", b"new", qos=1, retain=True, pid=2)
    s = _fresh_sub(broker.port, "s", [("ret/b", 1)])
    assert s.expect_publish().payload == b"new"
    s.expect_silence(0.3)


def test_empty_retained_payload_clears_retained(broker):
    live = _fresh_sub(broker.port, "live", [("ret/c", 1)])
    with _publisher(broker.port) as p:
        p.publish("ret/c", b"soon-gone", qos=1, retain=True, pid=1)
        p.publish("ret/c", b"", qos=1, retain=True, pid=2)
    # Existing subscribers get the empty message itself (Mosquitto), as a
    # normal, non-retained delivery.
    assert live.expect_publish().payload == b"soon-gone"
    m = live.expect_publish()
    assert (m.payload, m.retain) == (b"", False)
    late = _fresh_sub(broker.port, "late", [("ret/c", 1)])
    late.expect_silence(0.4)


def test_live_messages_have_retain_flag_cleared(broker):
    s = _fresh_sub(broker.port, "s", [("ret/d", 1)])
    with _publisher(broker.port) as p:
        p.publish("ret/d", b"live-and-stored", qos=1, retain=True)
    m = s.expect_publish()
    assert (m.payload, m.retain) == (b"live-and-stored", False)


def test_retained_matched_by_wildcard_subscriptions(broker):
    topics = ["wr/a", "wr/a/b", "wr/c/b", "other/x"]
    with _publisher(broker.port) as p:
        for i, t in enumerate(topics):
            p.publish(t, t.encode(), qos=1, retain=True, pid=i + 1)
    for flt, want in [("wr/#", {"wr/a", "wr/a/b", "wr/c/b"}),
                      ("wr/+/b", {"wr/a/b", "wr/c/b"}),
                      ("+", set()),
                      ("+/x", {"other/x"})]:
        s = _fresh_sub(broker.port, "w-" + flt, [(flt, 1)])
        got = s.recv_exactly(len(want))
        assert {g.topic for g in got} == want, flt
        assert all(g.retain and g.payload == g.topic.encode() for g in got)
        s.close()


def test_retained_delivered_at_min_of_stored_and_subscription_qos(broker):
    with _publisher(broker.port) as p:
        p.publish("ret/q", b"q2", qos=2, retain=True)
    for sub_qos in (0, 1, 2):
        s = _fresh_sub(broker.port, "q%d" % sub_qos, [("ret/q", sub_qos)])
        m = s.expect_publish()
        assert (m.qos, m.retain) == (sub_qos, True)
        s.close()


def test_retained_sent_once_per_matching_filter_and_on_resubscribe(broker):
    # One SUBSCRIBE with two filters matching the same retained message is
    # handled as two SUBSCRIBEs: two copies, each at its filter's QoS.
    with _publisher(broker.port) as p:
        p.publish("ret/e", b"r", qos=1, retain=True)
    s = _fresh_sub(broker.port, "two", [("ret/e", 1), ("ret/#", 0)])
    got = s.recv_exactly(2)
    assert sorted((g.qos, g.retain) for g in got) == [(0, True), (1, True)]
    for g in got:
        s.ack(g)
    # Subscribing again to the same filter sends the retained message again.
    s.subscribe([("ret/e", 1)], pid=2)
    m = s.expect_publish()
    assert (m.payload, m.retain) == (b"r", True)


def test_sys_version_is_retained(broker):
    s = _fresh_sub(broker.port, "sysv", [("$SYS/broker/version", 0)])
    m = s.expect(mqttraw.PUBLISH)
    assert m.retain and m.payload


def test_mosquitto_sub_gets_retained_message(broker):
    clients.mosquitto_pub(broker.port, "cli/ret", "hello retained", qos=1, retain=True)
    sub = clients.mosquitto_sub_start(broker.port, "cli/#", count=1, qos=1)
    out, err = sub.communicate(timeout=10)
    assert sub.returncode == 0, err
    assert out == "cli/ret hello retained\n"
