"""MQTT 5.0 SUBSCRIBE / UNSUBSCRIBE: subscription identifiers, no local,
retain as published, retain handling, SUBACK / UNSUBACK reason codes, shared
subscriptions. Expected values are Mosquitto 2.0.11's; where it departs from
the OASIS spec a comment says so."""

import pytest

import mqtt5raw as m5
from conftest import DEFAULT_CONF
from mqtt5raw import Client5, sub_options


def _client(port, cid, **kw):
    c = Client5(port)
    assert c.connect(cid, **kw).rc == 0
    return c


def test_mqtt5_subscription_identifier_in_delivery(broker):
    s = _client(broker.port, "sid")
    s.subscribe([("sid/#", 1)], props=[(m5.SUBSCRIPTION_IDENTIFIER, 7)])
    s.subscribe([("sid2/#", 1)], pid=2, props=[(m5.SUBSCRIPTION_IDENTIFIER, 268435455)])
    s.subscribe([("noid/#", 1)], pid=3)
    p = _client(broker.port, "sid-pub")
    p.publish("sid/a", b"1", qos=1)
    p.publish("sid2/a", b"2", qos=1, pid=2)
    p.publish("noid/a", b"3", qos=1, pid=3)
    got = [s.expect_publish() for _ in range(3)]
    assert [m.props.all(m5.SUBSCRIPTION_IDENTIFIER) for m in got] == [[7], [268435455], []]


def test_mqtt5_subscription_identifier_overlapping_subscriptions(broker):
    # Spec 3.3.4: with overlapping subscriptions the server either sends one
    # copy carrying every matching identifier, or one copy per subscription,
    # each with its own. Mosquitto 2.0.11 sends ONE COPY PER SUBSCRIPTION
    # (each at that subscription's QoS, with that subscription's identifier,
    # none for a subscription without one). Both forms are accepted: the
    # union of identifiers must be exactly the matching subscriptions'.
    s = _client(broker.port, "ovl")
    s.subscribe([("ovl/#", 1)], props=[(m5.SUBSCRIPTION_IDENTIFIER, 7)])
    s.subscribe([("ovl/+", 0)], pid=2, props=[(m5.SUBSCRIPTION_IDENTIFIER, 300)])
    s.subscribe([("ovl/x", 1)], pid=3)
    s.subscribe([("other/#", 1)], pid=4, props=[(m5.SUBSCRIPTION_IDENTIFIER, 9)])
    p = _client(broker.port, "ovl-pub")
    p.publish("ovl/x", b"one", qos=1)
    got = s.recv_all(0.5)
    for m in got:
        s.ack(m)
    assert got and all(m.payload == b"one" for m in got)
    ids = sorted(i for m in got for i in m.props.all(m5.SUBSCRIPTION_IDENTIFIER))
    assert ids == [7, 300]
    assert len(got) in (1, 3), got
    if broker.flavour == "mosquitto":
        assert sorted((m.qos, tuple(m.props.all(m5.SUBSCRIPTION_IDENTIFIER)))
                      for m in got) == [(0, (300,)), (1, ()), (1, (7,))]


def test_mqtt5_subscription_identifier_replaced_on_resubscribe(broker):
    s = _client(broker.port, "resid")
    s.subscribe([("resid/t", 1)], props=[(m5.SUBSCRIPTION_IDENTIFIER, 1)])
    s.subscribe([("resid/t", 1)], pid=2, props=[(m5.SUBSCRIPTION_IDENTIFIER, 2)])
    p = _client(broker.port, "resid-pub")
    p.publish("resid/t", b"x", qos=1)
    m = s.expect_publish()
    assert m.props.all(m5.SUBSCRIPTION_IDENTIFIER) == [2]
    s.expect_silence(0.2)


def test_mqtt5_subscription_identifier_zero_is_malformed(broker):
    # Spec: identifier 0 is a Protocol Error; Mosquitto 2.0.11 answers
    # DISCONNECT 0x81 (Malformed Packet). Either is accepted.
    with Client5(broker.port) as c:
        c.connect("sid0")
        c.send(m5.subscribe(1, [("a", 0)], props=[(m5.SUBSCRIPTION_IDENTIFIER, 0)]))
        assert c.expect_disconnect().rc in (m5.MALFORMED_PACKET, m5.PROTOCOL_ERROR)


def test_mqtt5_no_local(broker):
    c = _client(broker.port, "nl")
    c.subscribe([("nl/t", sub_options(1, no_local=True)), ("nl/u", sub_options(1))])
    other = _client(broker.port, "nl-other")
    c.publish("nl/t", b"own-suppressed", qos=1)
    c.publish("nl/u", b"own-delivered", qos=1, pid=2)
    other.publish("nl/t", b"others-delivered", qos=1)
    got = [c.expect_publish() for _ in range(2)]
    assert sorted((m.topic, m.payload) for m in got) == [
        ("nl/t", b"others-delivered"), ("nl/u", b"own-delivered")]
    c.expect_silence(0.2)


def test_mqtt5_retain_as_published(broker):
    s0 = _client(broker.port, "rap0")
    s0.subscribe([("rap/t", sub_options(1))])
    s1 = _client(broker.port, "rap1")
    s1.subscribe([("rap/t", sub_options(1, retain_as_published=True))])
    p = _client(broker.port, "rap-pub")
    p.publish("rap/t", b"live-retained", qos=1, retain=True)
    p.publish("rap/t", b"live-plain", qos=1, pid=2)
    a = [s0.expect_publish() for _ in range(2)]
    b = [s1.expect_publish() for _ in range(2)]
    # Without the option the retain flag is cleared on live delivery.
    assert [(m.payload, m.retain) for m in a] == [(b"live-retained", False), (b"live-plain", False)]
    assert [(m.payload, m.retain) for m in b] == [(b"live-retained", True), (b"live-plain", False)]
    p.publish("rap/t", b"", qos=1, retain=True, pid=3)  # clean up the retained message


@pytest.mark.parametrize("rap", [False, True], ids=["rap0", "rap1"])
def test_mqtt5_retained_message_on_subscribe_keeps_retain_flag(broker, rap):
    p = _client(broker.port, "rfl-pub")
    p.publish("rfl/t", b"R", qos=1, retain=True)
    s = _client(broker.port, "rfl")
    s.subscribe([("rfl/t", sub_options(1, retain_as_published=rap))])
    m = s.expect_publish()
    assert m.payload == b"R" and m.retain


def _retained_after(broker, rh, cid):
    """Subscribes twice with retain handling rh; returns (payloads on the
    first SUBSCRIBE, payloads on the second)."""
    p = _client(broker.port, cid + "-pub")
    p.publish("rh/t", b"R", qos=1, retain=True)
    s = _client(broker.port, cid)
    s.subscribe([("rh/t", sub_options(1, retain_handling=rh))])
    first = [m.payload for m in s.recv_all(0.3)]
    s.subscribe([("rh/t", sub_options(1, retain_handling=rh))], pid=2)
    second = [m.payload for m in s.recv_all(0.3)]
    return first, second


def test_mqtt5_retain_handling_0_sends_on_every_subscribe(broker):
    assert _retained_after(broker, 0, "rh0") == ([b"R"], [b"R"])


def test_mqtt5_retain_handling_1_sends_only_on_new_subscription(broker):
    assert _retained_after(broker, 1, "rh1") == ([b"R"], [])


def test_mqtt5_retain_handling_2_never_sends(broker):
    assert _retained_after(broker, 2, "rh2") == ([], [])


def test_mqtt5_retain_handling_3_is_malformed(broker):
    # Spec: retain handling 3 is a Protocol Error; Mosquitto 2.0.11 answers
    # DISCONNECT 0x81. Either is accepted.
    with Client5(broker.port) as c:
        c.connect("rh3")
        c.send(m5.subscribe(1, [("a", 0x30)]))
        assert c.expect_disconnect().rc in (m5.MALFORMED_PACKET, m5.PROTOCOL_ERROR)


@pytest.mark.parametrize("opts", [0x03, 0x40, 0x80], ids=["qos3", "reserved6", "reserved7"])
def test_mqtt5_subscribe_invalid_options_malformed_0x81(broker, opts):
    with Client5(broker.port) as c:
        c.connect("badopt")
        c.send(m5.subscribe(1, [("a", opts)]))
        assert c.expect_disconnect().rc == m5.MALFORMED_PACKET


def test_mqtt5_subscribe_invalid_filter(broker):
    # Spec allows SUBACK 0x8F (Topic Filter invalid) for that filter.
    # Mosquitto 2.0.11 instead disconnects with 0x81 (Malformed Packet).
    with Client5(broker.port) as c:
        c.connect("badfilter")
        c.send(m5.subscribe(1, [("a/#/b", 0), ("ok/t", 1)]))
        r = c.recv()
        if r.type == m5.SUBACK:
            assert r.codes == [m5.TOPIC_FILTER_INVALID, 1]
            c.ping()  # and the connection stays
        else:
            assert r.type == m5.DISCONNECT and r.rc == m5.MALFORMED_PACKET, r
            c.expect_closed(2)


def test_mqtt5_suback_granted_qos_capped_by_max_qos(broker_factory):
    b = broker_factory(DEFAULT_CONF + "max_qos 1\n")
    with Client5(b.port) as c:
        c.connect("mq")
        assert c.subscribe([("mq/a", 2), ("mq/b", 1), ("mq/c", 0)]).codes == [1, 1, 0]


def test_mqtt5_subscribe_not_authorized(broker_factory, tmp_path):
    # Spec allows SUBACK 0x87 (Not authorized). Mosquitto 2.0.11 with an
    # acl_file GRANTS the subscription (SUBACK 0x01) and then filters each
    # delivery by the read ACL. Either is accepted; nothing may be delivered.
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\ntopic write closed/#\n")
    b = broker_factory(DEFAULT_CONF + "acl_file %s\n" % acl)
    with Client5(b.port) as c, Client5(b.port) as p:
        c.connect("acl")
        codes = c.subscribe([("open/t", 1), ("closed/t", 1)]).codes
        assert codes[0] == 1 and codes[1] in (1, m5.NOT_AUTHORIZED), codes
        p.connect("acl-pub")
        p.publish("closed/t", b"secret", qos=1)
        p.publish("open/t", b"public", qos=1, pid=2)
        m = c.expect_publish()
        assert (m.topic, m.payload) == ("open/t", b"public")
        c.expect_silence(0.2)


def test_mqtt5_unsuback_reason_codes(broker):
    with Client5(broker.port) as c:
        c.connect("unsub")
        c.subscribe([("uns/a", 1)])
        ack = c.unsubscribe(["uns/none", "uns/a", "uns/a"])
        assert ack.codes == [m5.NO_SUBSCRIPTION_EXISTED, m5.SUCCESS,
                             m5.NO_SUBSCRIPTION_EXISTED]


def _drain(c, into):
    for m in c.recv_all(0.3):
        if m.type == m5.PUBLISH:
            c.ack(m)
            into.append(m.payload)



def test_mqtt5_shared_subscription_each_message_once_spread(broker):
    a = _client(broker.port, "sha")
    b = _client(broker.port, "shb")
    assert a.subscribe([("$share/g/sh/t", 1)]).codes == [1]
    assert b.subscribe([("$share/g/sh/t", 1)]).codes == [1]
    normal = _client(broker.port, "sh-normal")
    normal.subscribe([("sh/t", 1)])
    p = _client(broker.port, "sh-pub")
    for i in range(20):
        assert p.publish("sh/t", b"%d" % i, qos=1, pid=i + 1).rc == 0
    ga, gb, gn = [], [], []
    _drain(a, ga)
    _drain(b, gb)
    _drain(normal, gn)
    want = [b"%d" % i for i in range(20)]
    assert sorted(ga + gb, key=int) == want, (ga, gb)
    assert ga and gb, "one member got nothing: %r / %r" % (ga, gb)
    # A non-shared subscriber still gets everything.
    assert gn == want
    # Mosquitto 2.0.11 is strict round robin: members alternate.
    if broker.flavour == "mosquitto":
        assert len(ga) == len(gb) == 10


def test_mqtt5_shared_subscription_qos1_member_leaving_loses_nothing(broker):
    a = _client(broker.port, "shl-a")
    b = _client(broker.port, "shl-b")
    a.subscribe([("$share/grp/shl/t", 1)])
    b.subscribe([("$share/grp/shl/t", 1)])
    p = _client(broker.port, "shl-pub")
    for i in range(10):
        p.publish("shl/t", b"%d" % i, qos=1, pid=i + 1)
    ga, gb = [], []
    _drain(a, ga)
    _drain(b, gb)
    # b leaves (session ends: clean start, expiry 0); a must get the rest.
    # b is gone once the broker has closed it: a message the group handed
    # to b while its DISCONNECT was unread would go with b's session.
    b.send(m5.disconnect())
    b.expect_closed(2)
    b.close()
    for i in range(10, 20):
        p.publish("shl/t", b"%d" % i, qos=1, pid=i + 1)
    _drain(a, ga)
    assert sorted(ga + gb, key=int) == [b"%d" % i for i in range(20)]
    assert ga[-10:] == [b"%d" % i for i in range(10, 20)]


def test_mqtt5_shared_subscription_unacked_messages_of_leaving_member(broker):
    # b receives QoS 1 messages and drops off without acking them. Spec
    # 4.8.2: the server MAY re-send them to another member; it must not
    # re-send them to a member that no longer exists. Mosquitto 2.0.11 does
    # NOT redistribute: b's unacked messages are lost to the group when b's
    # session ends. We therefore assert only: a gets each of its own
    # messages exactly once plus everything published after b left.
    a = _client(broker.port, "shu-a")
    b = _client(broker.port, "shu-b")
    a.subscribe([("$share/u/shu/t", 1)])
    b.subscribe([("$share/u/shu/t", 1)])
    p = _client(broker.port, "shu-pub")
    for i in range(10):
        p.publish("shu/t", b"%d" % i, qos=1, pid=i + 1)
    ga = []
    _drain(a, ga)
    b_got = [m.payload for m in b.recv_all(0.3)]   # never acked
    assert ga and b_got
    since = broker.mark()
    b.close()
    broker.wait_client_gone("shu-b", since)
    for i in range(10, 15):
        p.publish("shu/t", b"%d" % i, qos=1, pid=i + 1)
    _drain(a, ga)
    assert len(ga) == len(set(ga))
    assert set(b"%d" % i for i in range(10, 15)) <= set(ga)
    assert set(ga) | set(b_got) == set(b"%d" % i for i in range(15))


def test_mqtt5_shared_subscription_and_311_member(broker):
    import mqttraw
    a = _client(broker.port, "sh5")
    o = mqttraw.RawClient(broker.port)
    o.connect("sh311")
    a.subscribe([("$share/mix/shm/t", 1)])
    assert o.subscribe([("$share/mix/shm/t", 1)]) == [1]
    p = _client(broker.port, "shm-pub")
    for i in range(6):
        p.publish("shm/t", b"%d" % i, qos=1, pid=i + 1)
    ga = []
    _drain(a, ga)
    go = []
    for m in o.recv_all(0.3):
        o.ack(m)
        go.append(m.payload)
    assert sorted(ga + go, key=int) == [b"%d" % i for i in range(6)]
    assert ga and go


def test_mqtt5_unsubscribe_shared_subscription(broker):
    a = _client(broker.port, "shun")
    a.subscribe([("$share/g/shun/t", 1)])
    assert a.unsubscribe(["$share/g/shun/t"]).codes == [m5.SUCCESS]
    p = _client(broker.port, "shun-pub")
    assert p.publish("shun/t", b"x", qos=1).rc == m5.NO_MATCHING_SUBSCRIBERS
    a.expect_silence(0.2)
