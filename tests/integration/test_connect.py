"""CONNECT and CONNACK (MQTT 3.1.1 section 3.1, 3.2)."""

import pytest

import mqttraw
from clients import Bystander, Paho
from mqttraw import RawClient


def test_session_present_flag_follows_clean_session(broker):
    with RawClient(broker.port) as c:
        assert not c.connect("sp", clean=False).session_present  # no session yet
        c.send(mqttraw.disconnect())
        c.expect_closed(2)
    with RawClient(broker.port) as c:
        assert c.connect("sp", clean=False).session_present
        c.send(mqttraw.disconnect())
        c.expect_closed(2)
    with RawClient(broker.port) as c:
        # Clean session: always 0, and the stored session is discarded...
        assert not c.connect("sp", clean=True).session_present
        c.send(mqttraw.disconnect())
        c.expect_closed(2)
    with RawClient(broker.port) as c:
        # ...so the next persistent connect starts afresh.
        assert not c.connect("sp", clean=False).session_present


def test_persistent_session_keeps_subscriptions(broker):
    with RawClient(broker.port) as c:
        c.connect("keep", clean=False)
        assert c.subscribe([("keep/t", 1)]) == [1]
        c.send(mqttraw.disconnect())
        c.expect_closed(2)
    with RawClient(broker.port) as c:
        assert c.connect("keep", clean=False).session_present
        with RawClient(broker.port) as p:
            p.connect("pub")
            p.publish("keep/t", b"kept", qos=1)
        m = c.expect_publish()
        assert (m.topic, m.payload, m.qos) == ("keep/t", b"kept", 1)


def test_clean_session_discards_subscriptions(broker):
    with RawClient(broker.port) as c:
        c.connect("drop", clean=False)
        c.subscribe([("drop/t", 1)])
        c.send(mqttraw.disconnect())
        c.expect_closed(2)
    with RawClient(broker.port) as c:
        assert not c.connect("drop", clean=True).session_present
        with RawClient(broker.port) as p:
            p.connect("pub")
            p.publish("drop/t", b"gone", qos=1)
        c.expect_silence(0.3)


def test_paho_persistent_session_reports_session_present(broker):
    a = Paho(broker.port, "paho-sp", clean=False)
    assert a.rc == 0 and not a.session_present
    a.subscribe("paho/t", 1)
    a.stop()
    b = Paho(broker.port, "paho-sp", clean=False)
    try:
        assert b.rc == 0 and b.session_present
        c = Paho(broker.port, "paho-pub")
        c.publish("paho/t", b"hi", qos=1)
        c.stop()
        m = b.get()
        assert (m.topic, m.payload, m.qos) == ("paho/t", b"hi", 1)
    finally:
        b.stop()


def test_empty_client_id_with_clean_session_is_accepted(broker):
    # Mosquitto assigns "auto-<UUID>".
    a, b = RawClient(broker.port), RawClient(broker.port)
    assert a.connect("", clean=True).rc == 0
    assert b.connect("", clean=True).rc == 0
    # Two anonymous-id clients are distinct: neither takes the other over.
    a.subscribe([("empty/t", 0)])
    b.publish("empty/t", b"x")
    assert a.expect(mqttraw.PUBLISH).payload == b"x"
    b.ping()


def test_empty_client_id_without_clean_session_is_rejected(broker):
    with RawClient(broker.port) as c:
        ack = c.connect("", clean=False)
        assert ack.rc == 0x02  # identifier rejected
        assert not ack.session_present
        c.expect_closed(2)


def test_username_and_password_accepted_with_allow_anonymous(broker):
    with RawClient(broker.port) as c:
        assert c.connect("up", username="user", password=b"secret").rc == 0
        c.ping()
    with RawClient(broker.port) as c:
        assert c.connect("u", username="user").rc == 0
        c.ping()


def test_first_packet_not_connect_closes_connection(broker):
    by = Bystander(broker.port)
    for first in (mqttraw.subscribe(1, "a"), mqttraw.pingreq(),
                  mqttraw.publish("a", b"x")):
        with RawClient(broker.port) as c:
            c.send(first)
            c.expect_closed(3)  # without any answer
    by.round_trip()


def test_second_connect_closes_connection(broker):
    by = Bystander(broker.port)
    with RawClient(broker.port) as c:
        assert c.connect("twice").rc == 0
        c.send(mqttraw.connect("twice"))
        c.expect_closed(3)
    by.round_trip()


@pytest.mark.parametrize("level", [0, 2, 3, 5 + 1, 255])
def test_unsupported_protocol_level_gets_connack_1(broker, level):
    # Level 3 is MQTT 3.1, valid only with the name "MQIsdp"; 5 is MQTT 5
    # (out of scope here).
    with RawClient(broker.port) as c:
        ack = c.connect("lvl", proto_level=level)
        assert ack.rc == 0x01  # unacceptable protocol version
        c.expect_closed(2)


def test_mqisdp_name_with_level_4_gets_connack_1(broker):
    with RawClient(broker.port) as c:
        ack = c.connect("lvl", proto_name="MQIsdp", proto_level=4)
        assert ack.rc == 0x01
        c.expect_closed(2)


def test_unknown_protocol_name_closes_without_connack(broker):
    with RawClient(broker.port) as c:
        c.send(mqttraw.connect("x", proto_name="MQTX"))
        c.expect_closed(3)  # without a CONNACK


def test_mqtt31_mqisdp_level_3_accepted(broker):
    with RawClient(broker.port) as c:
        ack = c.connect("v31", proto_name="MQIsdp", proto_level=3)
        assert ack.rc == 0
        c.subscribe([("v31/t", 1)])
        c.publish("v31/t", b"old", qos=1, pid=2)
        assert c.expect_publish().payload == b"old"


def test_mqtt31_resent_pubrel_with_dup_completes(broker):
    # MQTT 3.1 clients set DUP (and QoS 1) on a PUBREL they send again;
    # 3.1 fixes no such flags, and Mosquitto completes the flow.
    with RawClient(broker.port) as c:
        assert c.connect("v31d", proto_name="MQIsdp", proto_level=3).rc == 0
        c.send(mqttraw.publish("v31/q2", b"x", qos=2, pid=7))
        assert c.expect(mqttraw.PUBREC).pid == 7
        c.send(mqttraw.pubrel(7, flags=0x0A))
        assert c.expect(mqttraw.PUBCOMP).pid == 7
        c.ping()


def test_mqtt311_pubrel_with_dup_is_malformed(broker):
    # 3.1.1 fixes PUBREL's flags at 0x2: anything else closes.
    with RawClient(broker.port) as c:
        assert c.connect("v311d").rc == 0
        c.send(mqttraw.publish("v311/q2", b"x", qos=2, pid=7))
        assert c.expect(mqttraw.PUBREC).pid == 7
        c.send(mqttraw.pubrel(7, flags=0x0A))
        c.expect_closed(3)


@pytest.mark.parametrize("qos,wrong", [(1, "pubrec"), (1, "pubcomp"),
                                       (2, "puback"), (2, "pubcomp")])
def test_acknowledgement_of_the_wrong_type_closes(broker, qos, wrong):
    # The client's state and the broker's disagree: a protocol error, and
    # the connection closes (Mosquitto: no DISCONNECT, even in MQTT 5).
    with RawClient(broker.port) as sub, RawClient(broker.port) as pub:
        assert sub.connect("wrong-ack").rc == 0
        sub.subscribe([("wa/t", qos)])
        assert pub.connect("wa-pub").rc == 0
        pub.publish("wa/t", b"m", qos=qos, pid=3)
        m = sub.expect(mqttraw.PUBLISH)  # not acknowledged
        assert m.qos == qos
        sub.send(getattr(mqttraw, wrong)(m.pid))
        sub.expect_closed(3)


@pytest.mark.parametrize("name,level", [("MQTT", 0x84), ("MQIsdp", 0x83)])
def test_bridge_protocol_level_accepted_with_no_local(broker, name, level):
    # Mosquitto's bridges set 0x80 in the protocol level; Mosquitto accepts
    # it from any client (its 06-bridge-no-local) and does not send the
    # bridge its own messages back.
    br = RawClient(broker.port)
    ack = br.connect("bridge-x", proto_name=name, proto_level=level)
    assert ack.rc == 0 and not ack.session_present
    assert br.subscribe([("loop/#", 1)]) == [1]
    br.publish("loop/own", b"mine", qos=1)
    other = RawClient(broker.port)
    assert other.connect("other").rc == 0
    other.publish("loop/else", b"theirs", qos=1, retain=True)
    m = br.expect_publish()
    assert (m.topic, m.payload) == ("loop/else", b"theirs")
    assert m.retain  # retain as published, for a bridge
    br.expect_silence(0.5)
